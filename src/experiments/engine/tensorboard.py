"""TensorBoard: a logger that flushes by time, and what goes into its event files without being
drawn or logged twice (PNG images as they are, the HPARAMS record)."""

from __future__ import annotations

import io
import math
import numbers
import struct
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger that writes and flushes its scalars at most every ``flush_interval`` seconds.

    Lightning calls ``save()`` after every ``log_metrics``: the writer's flush (a wait for its
    thread and the disk) and a look on disk for ``hparams.yaml``, once per epoch, cost 8% of an
    XOR run (300 one-batch epochs). And every scalar was an event of its own, handed to the
    writer's thread at once: a queue put that wakes that thread, which then takes the
    interpreter's lock from the training loop (1.5 ms of a 4 ms XOR epoch, sampled). Here the
    values of a ``log_metrics`` call are read at once (with the time they were logged) and kept;
    they go to the writer as one event per call (every value of the call in one summary: the cost
    of an event is per event, not per value) when the interval has passed, when a checkpoint has
    been written (so a run killed later and resumed from it loses no point it will not log
    again), and when the run ends, however it ends (``finalize``). A SIGKILL can lose the last
    ``flush_interval`` seconds of curves, which an exact resume logs again. ``flush_interval=0``
    is Lightning's behaviour: every scalar an event, written and flushed at once.
    """

    def __init__(self, *args: Any, flush_interval: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, got {flush_interval}")
        self.flush_interval = flush_interval
        self._last_save = -math.inf
        # (tag -> value, step, wall time) of each log_metrics call not yet handed to the writer
        self._pending: list[tuple[dict[str, float], int | None, float]] = []

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.flush_interval <= 0 or self._prefix:  # private: lightning 2.6
            return super().log_metrics(metrics, step)
        values: dict[str, float] = {}
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, numbers.Real):
                values[name] = float(value)
            else:  # a dict of scalars, or what Lightning refuses in one line: Lightning's own way
                self._write_pending()
                super().log_metrics({name: value}, step)
        if values:
            self._pending.append((values, step, time.time()))

    def _write_pending(self) -> None:
        """The kept values to the writer, one event per ``log_metrics`` call: the same tags, steps,
        wall times and float32 values as ``SummaryWriter.add_scalar`` writes one by one."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        writer = self.experiment._get_file_writer()  # private: torch 2
        for values, step, wall_time in pending:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
            writer.add_summary(summary, step, wall_time)

    def save(self) -> None:
        now = time.monotonic()
        if now - self._last_save >= self.flush_interval:
            self._write_pending()
            super().save()
            self._last_save = now

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        if self._pending:
            self._write_pending()
            self.experiment.flush()

    def finalize(self, status: str) -> None:
        self._write_pending()
        self._last_save = -math.inf  # the last flush is never skipped
        super().finalize(status)


def add_png_to_tensorboard(writer: Any, tag: str, png: bytes, step: int) -> None:
    """An encoded PNG image, as it is, in the event file of a TensorBoard ``SummaryWriter``.

    torch's ``add_image`` takes pixels and encodes them again (and ``add_figure`` draws the figure
    again): for the learning curves at the end of every fit, decoding and encoding the picture
    took a third as long as drawing it. TensorBoard's image summary holds the PNG's own bytes;
    ``_get_file_writer`` is how torch's ``SummaryWriter`` itself writes a summary, and reopens its
    file once Lightning has closed it at the end of a fit.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk, right after the signature
    channels = {0: 1, 4: 2, 2: 3, 6: 4}.get(png[25], 4)  # PNG colour type -> TensorBoard colorspace
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    file_writer = writer._get_file_writer()  # private: torch 2
    file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


def purge_tensorboard_after(logger: Any, step: int) -> None:
    """Make a resumed run's TensorBoard writer hide what the killed run logged after ``step``.

    SummaryWriter's ``purge_step``; Lightning's TensorBoardLogger passes its stored keyword
    arguments on to the writer it creates lazily, and has no public way to add one later.
    """
    if isinstance(logger, LightningTensorBoardLogger):
        logger._kwargs.setdefault("purge_step", step)  # private: lightning 2.6


def write_tensorboard_hparams(
    logger: LightningTensorBoardLogger, params: dict[str, Any], metrics: dict[str, float], step: int
) -> None:
    """The HPARAMS tab's record, written without re-logging every metric at step 0.

    Lightning's ``log_hyperparams(params, metrics)`` logs each metric again as a scalar at step 0,
    which puts a false first point on every test curve; the summary is written to the logger's own
    file writer instead (``SummaryWriter._get_file_writer``).
    """
    from torch.utils.tensorboard.summary import hparams

    writer = logger.experiment._get_file_writer()  # private: torch 2
    for summary in hparams(params, metrics):
        writer.add_summary(summary)
    # The HPARAMS tab reads each metric's value from a scalar of the same tag.
    for name, value in metrics.items():
        if name.startswith("best/"):
            logger.experiment.add_scalar(name, value, global_step=step)
    writer.flush()


def tensorboard_loggers(trainer: L.Trainer) -> list[LightningTensorBoardLogger]:
    """The TensorBoard loggers of ``trainer``."""
    return [logger for logger in trainer.loggers if isinstance(logger, LightningTensorBoardLogger)]


def log_figure(trainer: L.Trainer, tag: str, figure: Any) -> None:
    """A matplotlib figure as an image of every TensorBoard logger of ``trainer``, drawn once as a PNG."""
    if not tensorboard_loggers(trainer):
        return
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    log_png(trainer, tag, buffer.getvalue())


def log_png(trainer: L.Trainer, tag: str, png: bytes) -> None:
    """An encoded PNG as an image of every TensorBoard logger of ``trainer``, at the current step."""
    for logger in tensorboard_loggers(trainer):
        add_png_to_tensorboard(logger.experiment, tag, png, trainer.global_step)
