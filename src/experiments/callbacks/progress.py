"""A progress bar in a terminal: training, validation, test and predict."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar

_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix} [{elapsed}<{remaining}, {rate_fmt}]"


class ProgressBar(LightningProgressBar):
    """A bar for training, validation, test and predict when stdout is a terminal; nothing otherwise.

    Redrawn at most every ``refresh_seconds`` (by the clock, not every N batches: one check of the
    clock per batch is all it costs between draws), and cleared when its loop ends, so that the
    terminal keeps History's one line per epoch, as a file or a pipe does. The training bar counts
    batches of the epoch, also when ``steps_per_execution`` hands Lightning K of them at a time.
    """

    def __init__(self, refresh_seconds: float = 0.25, enabled: bool | None = None) -> None:
        super().__init__()
        if not refresh_seconds >= 0:
            raise ValueError(f"refresh_seconds must be >= 0 seconds, got {refresh_seconds}")
        self.refresh_seconds = refresh_seconds
        self._terminal = _stdout_is_terminal() if enabled is None else enabled
        self._enabled = self._terminal
        self._bar: Any = None
        self._next_draw = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = self._terminal

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _open(self, description: str, total: Any, unit: str = "batch") -> None:
        self._close()
        if not self._enabled:
            return
        import shutil

        from tqdm import tqdm

        total = int(total) if isinstance(total, (int, float)) and math.isfinite(total) else None
        # The size when the bar opens (80x24 where the terminal reports none); tqdm's own reading
        # of a 0x0 terminal (a fresh pty) would hide the bar.
        columns, lines = shutil.get_terminal_size()
        self._bar = tqdm(
            desc=description,
            total=total,
            unit=unit,
            file=sys.stdout,
            leave=False,
            disable=False,
            ncols=columns,
            nrows=lines,
            mininterval=0,
            smoothing=0.3,
            # The loss before the times: a line too wide for the terminal is cut at its right end
            # (tqdm shrinks the bar itself to one character first), so a narrow terminal keeps
            # the epoch, the batches done and the loss.
            bar_format=_BAR_FORMAT if total is not None else None,
        )
        self._next_draw = 0.0

    def _advance(self, done: int, loss: Any = None) -> None:
        now = time.monotonic()
        if self._bar is None or now < self._next_draw:
            return
        self._next_draw = now + self.refresh_seconds
        if loss is not None:
            self._bar.set_postfix_str(f"loss={float(loss):.4f}", refresh=False)
        self._bar.update(done - self._bar.n)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # training: one bar per epoch, in batches
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        total = getattr(loader, "batches_per_epoch", None) or self.total_train_batches
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._open(f"epoch {trainer.current_epoch + 1}{epochs}", total)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._bar is None or time.monotonic() < self._next_draw:
            return
        start = getattr(batch, "start", None)  # a chunk of K batches (steps_per_execution)
        done = start + len(batch) if isinstance(start, int) else batch_idx + 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._advance(done, loss if loss is not None and getattr(loss, "numel", lambda: 1)() == 1 else None)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    # validation (and the sanity check), test and predict: one bar per loop
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checking = trainer.sanity_checking
        batches = trainer.num_sanity_val_batches if checking else trainer.num_val_batches
        self._open("sanity check" if checking else "validating", sum(batches))
        self._done = 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._done += 1
        self._advance(self._done)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open("testing", sum(trainer.num_test_batches))
        self._done = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open("predicting", sum(trainer.num_predict_batches))
        self._done = 0

    # A batch done and a loop's end are the same for the three loops.
    on_test_batch_end = on_predict_batch_end = on_validation_batch_end
    on_test_end = on_predict_end = on_validation_end

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.clear()
        print(*args, **kwargs)


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
