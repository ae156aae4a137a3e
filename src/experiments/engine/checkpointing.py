"""Checkpoints written by time: Lightning's ModelCheckpoint that takes a checkpoint when Lightning
says so, and writes it to disk at most every ``min_write_interval`` seconds."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint that writes to disk at most every ``min_write_interval`` seconds.

    On XOR (one batch of four samples per epoch) writing ``best.ckpt`` and ``last.ckpt`` at every
    epoch was half of the fit time. A monitoring checkpoint (``best.ckpt``) is still *taken* at
    every improvement, as a copy in memory, and the copy is written once the interval has passed
    since the last write, and when fitting ends, fails or is interrupted. Its pending copy rides
    in every checkpoint Lightning writes (this callback's state), so ``last.ckpt`` holds the
    best-so-far weights even when ``best.ckpt`` on disk is older, and a resumed run writes them.
    A checkpoint of the latest state (``monitor=None``: ``last.ckpt``) is taken and written when
    the interval has passed and at the epoch where fitting stops. A kill, a failure or an
    interruption loses at most the last interval, which an exact resume recomputes.
    ``min_write_interval=0`` is Lightning's behaviour: every save is written at once.

    A step checkpoint (``every_n_train_steps``) due at the last batch of an epoch is taken at the
    end of that epoch instead, after its validation and ``on_train_epoch_end``: Lightning,
    restarting from a checkpoint taken at an epoch's last batch, goes on with the next epoch and
    skips what was left of that one (its validation, its history row).
    """

    def __init__(self, *args: Any, min_write_interval: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if min_write_interval < 0:
            raise ValueError(f"min_write_interval must be >= 0 seconds, got {min_write_interval}")
        self.min_write_interval = min_write_interval
        self._pending: tuple[str, dict[str, Any]] | None = None
        self._last_write = -math.inf
        self._taking = False
        self._owed = False

    def _monitor_candidates(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:  # private: lightning 2.6
        # Lightning deep-copies every logged value at each save (a tenth of an XOR run); a clone of
        # each tensor is what keeps the kept scores safe from later in-place updates.
        candidates = {
            k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in trainer.callback_metrics.items()
        }
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (
            trainer.received_sigterm
            and self.monitor is None
            and self._every_n_train_steps == 0  # private: lightning 2.6
            and not trainer.is_last_batch
            and not self._should_skip_saving_checkpoint(trainer)  # private: lightning 2.6
        ):
            # SIGTERM (preemption): Lightning raises at the end of this batch; take last.ckpt here, at
            # the point where its own step checkpoints are taken, so that the resume loses nothing.
            # (At an epoch's last batch it is taken at the epoch's end: see _stops_after_this_epoch.)
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))  # private: lightning 2.6
            return
        if (
            trainer.is_last_batch
            and self._every_n_train_steps > 0  # private: lightning 2.6
            and trainer.global_step % self._every_n_train_steps == 0  # private: lightning 2.6
            and not self._should_skip_saving_checkpoint(trainer)  # private: lightning 2.6
        ):
            self._owed = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._idle_at_this_epoch_end(trainer):
            return
        super().on_train_epoch_end(trainer, pl_module)
        if self._owed:
            self._owed = False
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)  # private: lightning 2.6
            self._save_last_checkpoint(trainer, candidates)  # private: lightning 2.6

    def _idle_at_this_epoch_end(self, trainer: L.Trainer) -> bool:
        """Whether the latest state (``last.ckpt``) would be neither taken nor written at this
        epoch's end (written less than ``min_write_interval`` ago, the run going on, no step
        checkpoint owed): then Lightning's epoch-end work (a copy of every logged value, the
        top-k bookkeeping, 0.25 ms of a 10 ms XOR epoch) is skipped too. Its path is set by the
        first epoch's end, which always writes."""
        return (
            self.monitor is None
            and self.min_write_interval > 0
            and not self._owed
            and bool(self.best_model_path)
            and time.monotonic() - self._last_write < self.min_write_interval
            and not _stops_after_this_epoch(trainer)
        )

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:  # private: lightning 2.6
        if self.min_write_interval <= 0:
            return super()._save_checkpoint(trainer, filepath)  # private: lightning 2.6
        due = time.monotonic() - self._last_write >= self.min_write_interval
        if self.monitor is None:
            # The latest state (last.ckpt) is taken only when it is written: when the interval has
            # passed, and at the epoch where the run stops. Copying it at every epoch only to drop
            # the copy at the next cost a tenth of an XOR run.
            if due or _stops_after_this_epoch(trainer):
                super()._save_checkpoint(trainer, filepath)  # private: lightning 2.6
                self._last_write = time.monotonic()
            return None
        self._taking = True
        try:
            # private: lightning 2.6 -- the checkpoint Lightning would write, taken without writing it
            checkpoint = _own_tensors(trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only))
        finally:
            self._taking = False
        self._pending = (filepath, checkpoint)
        self._last_global_step_saved = trainer.global_step  # private: lightning 2.6
        self._last_checkpoint_saved = filepath  # private: lightning 2.6
        if due:
            self.write_pending(trainer)
        return None

    def write_pending(self, trainer: L.Trainer) -> None:
        """Write the checkpoint taken last, if it is not on disk yet."""
        if self._pending is None:
            return
        filepath, checkpoint = self._pending
        step = checkpoint.get("global_step", -1)
        if any(
            # private: lightning 2.6
            c is not self and c._last_checkpoint_saved == filepath and c._last_global_step_saved > step
            for c in trainer.checkpoint_callbacks
            if isinstance(c, LightningModelCheckpoint)
        ):
            self._pending = None  # a step checkpoint wrote a later state to the same file
            return
        trainer.strategy.save_checkpoint(checkpoint, filepath)
        self._pending = None
        self._last_write = time.monotonic()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.write_pending(trainer)  # a resumed run's best-so-far weights, carried by last.ckpt

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.write_pending(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self.write_pending(trainer)  # taken at a consistent point, before whatever failed

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.monitor is not None and self._pending is not None and not self._taking:
            state["pending"] = {"path": self._pending[0], "checkpoint": self._pending[1]}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pending = state_dict.get("pending")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "pending"})
        if pending and Path(pending["path"]).parent == Path(self.dirpath or ""):
            self._pending = (pending["path"], pending["checkpoint"])


def _stops_after_this_epoch(trainer: L.Trainer) -> bool:
    """Whether fitting ends with the epoch that is ending (max_epochs, max_steps or a stop request)."""
    last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    # SIGTERM: Lightning raises once this epoch has ended.
    stopping = trainer.should_stop or trainer.received_sigterm
    return bool(stopping or last_epoch or 0 <= trainer.max_steps <= trainer.global_step)


def _own_tensors(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint that training can't change: copies of the weights and optimizer state.

    Those are the only parts of what ``dump_checkpoint`` returns that refer to live tensors that
    training updates in place; everything else is built anew by each ``state_dict()`` call. (A
    deep copy of the whole checkpoint also copies the history rows, so costs grow with epochs.)
    """
    owned = dict(checkpoint)
    if "state_dict" in owned:
        owned["state_dict"] = {k: v.detach().clone() for k, v in owned["state_dict"].items()}
    if "optimizer_states" in owned:
        owned["optimizer_states"] = [
            {
                **state,
                "state": {
                    i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in per.items()}
                    for i, per in state["state"].items()
                },
            }
            for state in owned["optimizer_states"]
        ]
    if "lr_schedulers" in owned:
        owned["lr_schedulers"] = copy.deepcopy(owned["lr_schedulers"])
    return owned
