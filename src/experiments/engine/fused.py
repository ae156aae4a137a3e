"""Fused steps: K optimizer steps per Lightning training step (``steps_per_execution``).

The train loader hands Lightning *chunks* of K consecutive batches (:class:`ChunkedLoader`), and
one Lightning training step runs all K optimizer steps (:class:`FusedSteps`). The last batch of
each chunk goes through Lightning's automatic optimisation as usual; the K - 1 before it are
stepped here, with what matters of Lightning's per-step work kept (see :mod:`experiments.engine`).
:class:`FusedSteps` is the only place where the engine touches a module or a data module: it
replaces six attributes of their *instances* for one fit (:meth:`FusedSteps.install`) and removes
them after (:meth:`FusedSteps.uninstall`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities.model_helpers import is_overridden

from experiments.engine.epoch_logs import EpochLogs
from experiments.errors import UserError
from experiments.signals import raise_pending_ctrl_c

log = logging.getLogger(__name__)

# Hooks of the optimizer step that a callback may rely on; called per inner step when overridden.
_STEP_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
# Module methods that mean "this module steps its own way": it cannot be fused.
_OWN_STEPPING = ("optimizer_step", "optimizer_zero_grad", "backward", "on_train_batch_start", "on_train_batch_end")


class Chunk:
    """Up to K consecutive training batches of one epoch, handed to Lightning as one batch.

    Batches are drawn from the loader only as they are trained on, so a checkpoint written
    inside a chunk records exactly how many batches the model has seen.
    """

    __slots__ = ("_batches", "size", "start", "stops_early")

    def __init__(self, batches: Iterator[Any], start: int, size: int, stops_early: bool = False) -> None:
        self._batches = batches
        self.start = start
        self.size = size
        # Cut short by max_steps before the end of the epoch: training stops inside the epoch.
        self.stops_early = stops_early

    def __len__(self) -> int:
        return self.size

    def next_batch(self) -> Any:
        return next(self._batches)


class ChunkedLoader:
    """A training loader's batches in chunks of ``steps`` (the last chunk of an epoch may be shorter).

    Chunks start at multiples of ``steps`` from the start of the epoch, so a run resumed inside an
    epoch (the wrapped loader restarts at its saved position) continues with the same chunks.
    ``limit`` caps the batches of an epoch (``limit_train_batches``, ``overfit_batches`` and
    ``fast_dev_run`` count batches, not chunks); ``steps_left`` (for ``max_steps``) ends the last
    chunk on the last step. ``state_dict``, ``load_state_dict`` and
    ``sampler.set_epoch`` are the wrapped loader's, so resuming works as without chunks.
    """

    def __init__(
        self, loader: Any, steps: int, limit: int | float = 1.0, steps_left: Callable[[], int] | None = None
    ) -> None:
        self.loader = loader
        self.steps = steps
        self.steps_left = steps_left
        # Lightning's rule for limit_train_batches: an int is a count, a float a fraction rounded down.
        count = len(loader)
        self.batches_per_epoch = min(limit, count) if isinstance(limit, int) else int(count * limit)
        if self.batches_per_epoch < 1:
            raise UserError(f"trainer.limit_train_batches={limit} leaves no training batch of {count}")
        self.sampler = loader.sampler

    def __len__(self) -> int:
        return -(-self.batches_per_epoch // self.steps)

    def __iter__(self) -> Iterator[Chunk]:
        position = self.loader.start_position
        batches = iter(self.loader)
        while position < self.batches_per_epoch:
            end = min((position // self.steps + 1) * self.steps, self.batches_per_epoch)
            full = end
            if self.steps_left is not None:  # max_steps: the last chunk ends on the last step
                end = min(end, position + max(self.steps_left(), 1))
            yield Chunk(batches, position, end - position, stops_early=end < full)
            position = end

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


class FusedSteps(Callback):
    """Runs the optimizer steps of a chunk; installed on the module by :class:`Trainer` for one fit."""

    def __init__(self, steps: int = 1) -> None:
        self.steps = steps  # set by the Trainer once "auto" is settled
        self.limit: int | float = 1.0
        self.logs: EpochLogs | None = None  # set while installed
        self.chunking = False  # the train loader is an in-memory one, chunked (set per fit)
        self._in_chunk = False
        self._saved_logs: dict[str, Any] | None = None
        self._saved_samples: dict[str, Any] = {}
        self._lightning_counts: tuple[Any, Any] | None = None  # see _not_the_epochs_last

    @property
    def state_key(self) -> str:
        return "FusedSteps"

    # Installing and removing ----------------------------------------------------------------

    def install(self, module: L.LightningModule, datamodule: Any, limit: int | float) -> None:
        self.limit = limit
        self.module = module
        self.training_step = module.training_step
        self.logs = EpochLogs(module.log, module)
        module.log = self.logs  # type: ignore[method-assign,assignment]
        if hasattr(module, "log_sample_metrics"):
            module.log_sample_metrics = self.logs.log_sample_metrics  # type: ignore[assignment]
        module.training_step = self._training_step  # type: ignore[method-assign]
        # A chunk passes Lightning's batch transfer untouched; its batches go through it one by one.
        self._before_transfer = module._on_before_batch_transfer  # private: lightning 2.6
        self._apply_transfer = module._apply_batch_transfer_handler  # private: lightning 2.6
        module._on_before_batch_transfer = self._chunk_before_transfer  # type: ignore[method-assign]  # private: lightning 2.6
        module._apply_batch_transfer_handler = self._chunk_apply_transfer  # type: ignore[method-assign]  # private: lightning 2.6
        self.datamodule = datamodule
        self.chunking = False  # until the train loader is known to be an in-memory one
        self._train_dataloader = datamodule.train_dataloader
        datamodule.train_dataloader = self._chunked_train_dataloader

    def uninstall(self) -> None:
        self._restore_lightning_counts()
        self.logs = None
        for name in (
            "log",
            "log_sample_metrics",
            "training_step",
            "_on_before_batch_transfer",
            "_apply_batch_transfer_handler",
        ):
            self.module.__dict__.pop(name, None)
        self.datamodule.__dict__.pop("train_dataloader", None)

    def _chunked_train_dataloader(self) -> Any:
        loader = self._train_dataloader()
        self.chunking = hasattr(loader, "start_position")  # read by the engine's own epoch loop
        if not self.chunking:
            if self.steps > 1:  # one step per Lightning step is what was asked for otherwise
                log.warning(
                    "steps_per_execution: %s's train loader is not an in-memory loader; one step per Lightning step",
                    type(self.datamodule).__name__,
                )
            return loader
        trainer = self.module.trainer
        steps_left = (lambda: trainer.max_steps - trainer.global_step) if trainer.max_steps >= 0 else None
        return ChunkedLoader(loader, self.steps, self.limit, steps_left)

    def _chunk_before_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        return batch if isinstance(batch, Chunk) else self._before_transfer(batch, dataloader_idx)

    def _chunk_apply_transfer(self, batch: Any, device: Any = None, dataloader_idx: int = 0) -> Any:
        return batch if isinstance(batch, Chunk) else self._apply_transfer(batch, device, dataloader_idx)

    # Per fit -----------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logs is None:
            return
        self.trainer = trainer
        optimizers = trainer.optimizers
        self.optimizer = optimizers[0] if len(optimizers) == 1 else None
        schedulers = [c for c in trainer.lr_scheduler_configs if c.interval == "step"]
        if any(c.frequency != 1 or c.reduce_on_plateau for c in schedulers):
            raise UserError(
                "a step-interval scheduler with frequency != 1 or on plateau cannot run inside "
                "fused steps; set trainer.steps_per_execution=1"
            )
        self.step_schedulers = [c.scheduler for c in schedulers]
        self.step_checkpoints = [
            c
            for c in trainer.checkpoint_callbacks
            # private: lightning 2.6 -- a step checkpoint's settings
            if isinstance(c, LightningModelCheckpoint) and (c._every_n_train_steps > 0 or c._train_time_interval)
        ]
        self.hooks = {
            name: [getattr(c, name) for c in trainer.callbacks if is_overridden(name, c, Callback)]  # type: ignore[attr-defined]
            + ([getattr(pl_module, name)] if is_overridden(name, pl_module, L.LightningModule) else [])
            for name in _STEP_HOOKS
        }
        self.clip = trainer.gradient_clip_val is not None or is_overridden(
            "configure_gradient_clipping", pl_module, L.LightningModule
        )
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scaler = scaler
        self.world_size = trainer.world_size
        self.progress = trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer
        # What Lightning does to a batch before training on it, for every batch of a chunk: the
        # precision's input conversion (float64 for 64-true) and the hooks that are overridden.
        self.batch_hooks: list[tuple[str, Any]] = []
        if is_overridden("convert_input", trainer.precision_plugin, Precision):
            self.batch_hooks.append(("convert_input", trainer.precision_plugin.convert_input))
        selector = trainer._data_connector._datahook_selector  # private: lightning 2.6
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
            owner = selector.get_instance(name) if selector is not None else pl_module
            base = L.LightningModule if isinstance(owner, L.LightningModule) else L.LightningDataModule
            if is_overridden(name, owner, base):
                self.batch_hooks.append((name, getattr(owner, name)))
        if (self._saved_logs is not None or self._saved_samples) and self.logs is not None:
            self.logs.load_state_dict(self._saved_logs or {}, self._saved_samples, pl_module.device)
            self._saved_logs, self._saved_samples = None, {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_lightning_counts()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logs is not None:
            self.logs.flush_epoch()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        raise_pending_ctrl_c()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        raise_pending_ctrl_c()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning counts the batches it is handed, which are chunks here: counted again in
        # chunks of this fit's K (1 when this fit does not fuse), so that a checkpoint of any K
        # resumes the same (else its epoch's validation is skipped, or the rest of its epoch).
        _count_in_chunks_of(checkpoint, self.steps if self.logs is not None else 1)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint taken while training still holds the finished progress of the last
        # validation run (2 of 2 batches, say). A run restarted from it twice can take that for a
        # validation that has already run and skip the epoch's validation (Lightning 2.6); taken
        # outside validation, it is one that has not started.
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
        if progress is not None and not trainer.validating:
            progress["current"] = {key: 0 for key in progress["current"]}
            progress["is_last_batch"] = False
        if self._in_chunk:
            _as_if_after_previous_chunk(checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epoch_logs": self.logs.state_dict() if self.logs else {},
            "epoch_samples": self.logs.samples_state_dict() if self.logs else {},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_logs = state_dict.get("epoch_logs") or None
        self._saved_samples = state_dict.get("epoch_samples") or {}

    # Per chunk ---------------------------------------------------------------------------------

    def _training_step(self, batch: Any, batch_idx: int = 0, *args: Any) -> Any:
        if not isinstance(batch, Chunk):
            return self.training_step(batch, batch_idx, *args)
        logs = self.logs
        assert logs is not None
        if batch.stops_early:
            self._not_the_epochs_last()
        logs.active = True
        self._in_chunk = True
        try:
            last = batch.size - 1
            for i in range(batch.size):
                inner = self._transfer(batch.next_batch())
                if i == last:  # Lightning steps this one, with its own hooks
                    return self._call_training_step(inner, batch.start + i)
                self._step(inner, batch.start + i)
            return None
        finally:
            logs.active = False
            self._in_chunk = False
            logs.flush_steps()

    def _not_the_epochs_last(self) -> None:
        """Show Lightning a chunk cut short by ``max_steps`` as what it is with one step per
        Lightning step: a batch inside the epoch. Lightning counts chunks, and a cut chunk in the
        epoch's last place looks to it like the epoch's end: it would validate there and step the
        epoch schedulers, which an unfused run stopping at the same step does not do. Its counts
        are put back when the next epoch starts or the fit ends."""
        trainer = self.trainer
        fit_loop = trainer.fit_loop
        progress = fit_loop.epoch_loop.batch_progress
        progress.is_last_batch = False
        if progress.current.ready >= fit_loop.max_batches and self._lightning_counts is None:
            self._lightning_counts = (fit_loop.max_batches, trainer.val_check_batch)
            fit_loop.max_batches = progress.current.ready + 1
            trainer.val_check_batch = float("inf")

    def _restore_lightning_counts(self) -> None:
        if self._lightning_counts is not None:
            self.trainer.fit_loop.max_batches, self.trainer.val_check_batch = self._lightning_counts
            self._lightning_counts = None

    def _transfer(self, batch: Any) -> Any:
        for name, hook in self.batch_hooks:
            if name == "transfer_batch_to_device":
                batch = hook(batch, self.module.device, 0)
            elif name == "convert_input":
                batch = hook(batch)
            else:
                batch = hook(batch, 0)
        return batch

    def _call_training_step(self, batch: Any, batch_idx: int) -> Any:
        assert self.logs is not None
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.logs.batch_size = len(first) if isinstance(first, torch.Tensor) and first.ndim else 1
        return self.training_step(batch, batch_idx)

    def _step(self, batch: Any, batch_idx: int) -> None:
        """One optimizer step, in the order of Lightning's automatic optimisation."""
        trainer, module, optimizer, hooks = self.trainer, self.module, self.optimizer, self.hooks
        assert optimizer is not None  # fused steps need exactly one optimizer (see _can_fuse)
        output = self._call_training_step(batch, batch_idx)
        loss = output["loss"] if isinstance(output, dict) else output
        if loss is None:  # the module skipped this batch, as Lightning allows
            return
        for hook in hooks["on_before_zero_grad"]:
            hook(trainer, module, optimizer) if _is_callback_hook(hook) else hook(optimizer)
        optimizer.zero_grad()
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        for hook in hooks["on_before_backward"]:
            hook(trainer, module, scaled) if _is_callback_hook(hook) else hook(scaled)
        scaled.backward()
        for hook in hooks["on_after_backward"]:
            hook(trainer, module) if _is_callback_hook(hook) else hook()
        if self.world_size > 1:
            # DDP syncs gradients in the backward pass that follows its forward call, i.e. only
            # the last batch of the chunk; the others are averaged here, as DDP would.
            for parameter in module.parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad.div_(self.world_size)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        for hook in hooks["on_before_optimizer_step"]:
            hook(trainer, module, optimizer) if _is_callback_hook(hook) else hook(optimizer)
        if self.clip:
            module.configure_gradient_clipping(
                optimizer,
                gradient_clip_val=trainer.gradient_clip_val,
                gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            )
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.progress.step.increment_ready()
        self.progress.step.increment_completed()
        for scheduler in self.step_schedulers:
            module.lr_scheduler_step(scheduler, None)
        for checkpoint in self.step_checkpoints:  # Lightning's own rule: never an epoch's last batch here
            LightningModelCheckpoint.on_train_batch_end(checkpoint, trainer, module, output, batch, batch_idx)
        # Counted after the checkpoint, as Lightning counts its own steps after on_train_batch_end
        # (and adds one when it restarts from such a checkpoint).
        trainer.fit_loop.epoch_loop._batches_that_stepped += 1  # private: lightning 2.6


def _as_if_after_previous_chunk(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint taken inside a chunk restart the way Lightning restarts one taken at the
    end of a training batch (``on_train_batch_end``).

    Lightning never checkpoints inside a training step, and restarts from such a checkpoint with
    its batch counters one apart for good (``total.ready`` ahead of ``total.completed``), which
    makes the next restart misjudge where it stopped and skip an epoch's validation. Here the
    chunk in progress counts as not started, and the one before it as ended but not yet completed,
    which Lightning completes when it restarts. The loader's own position, saved with the
    checkpoint, says where inside the chunk training goes on; and the logging step count is one
    short, as Lightning saves it at a batch end.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loops.get("epoch_loop.batch_progress")
    if progress is None:
        return
    for part in ("total", "current"):
        done = progress[part]["completed"]
        progress[part].update(ready=done, started=done, processed=done, completed=done - 1)
    progress["is_last_batch"] = False


def _count_in_chunks_of(checkpoint: dict[str, Any], steps: int) -> None:
    """Rewrite the training batch counters of a checkpoint into chunks of ``steps`` batches, from
    the train loader's own position (in batches) that the checkpoint holds.

    A position inside an epoch is ``floor(position / steps)`` chunks done (the chunk it falls in
    counts as not started, see :func:`_as_if_after_previous_chunk`), an epoch's end
    ``ceil(position / steps)``. The counters move together, so Lightning sees the same kind of
    restart (at a batch's end, at the epoch's end) as the checkpoint was written at. Without a
    loader position (a loader that is not an in-memory one) the checkpoint is left as it is.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loops.get("epoch_loop.batch_progress")
    loaders = (loops.get("state_dict") or {}).get("combined_loader") or []
    positions = [state.get("batches_done") for state in loaders if isinstance(state, dict)]
    if progress is None or len(positions) != 1 or not isinstance(positions[0], int):
        return
    done = positions[0]
    chunks = -(-done // steps) if progress.get("is_last_batch") else done // steps
    shift = chunks - progress["current"]["ready"]
    for part in ("total", "current"):
        for key in ("ready", "started", "processed", "completed"):
            progress[part][key] += shift


def _is_callback_hook(hook: Any) -> bool:
    return isinstance(getattr(hook, "__self__", None), Callback)


def cannot_fuse(module: L.LightningModule, trainer: L.Trainer) -> str | None:
    """Why ``module`` under ``trainer`` can't run fused steps, or None when it can."""
    if not module.automatic_optimization:
        return f"{type(module).__name__} optimises manually"
    for name in _OWN_STEPPING:
        if is_overridden(name, module, L.LightningModule):
            return f"{type(module).__name__} overrides {name}"
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches is not 1"
    if trainer.val_check_interval != 1.0:
        return "trainer.val_check_interval validates inside an epoch"
    return None
