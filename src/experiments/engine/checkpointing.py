"""Checkpoints written by time: Lightning's ModelCheckpoint that takes a checkpoint when Lightning
says so, and writes it to disk at most every ``min_write_interval`` seconds; and the writer of
every checkpoint file, which leaves either the previous complete file or the new one."""

from __future__ import annotations

import copy
import io
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing a local file through a temporary file in its own
    folder and a rename.

    Lightning's writes through fsspec's transaction, whose temporary file lies in the system's
    temp folder: on a full disk the copy into the run folder left a truncated ``last.ckpt`` (no
    resume possible), and the error named the temporary file. Here a failed write leaves the
    previous complete checkpoint, removes its temporary file (freeing the space for the run's
    status), and raises an ``OSError`` that names the checkpoint. Remote paths (``s3://``) are
    Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the permissions of any new file
            with os.fdopen(fd, "wb") as handle:
                handle.write(buffer.getbuffer())
            os.replace(tmp, target)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            raise OSError(err.errno, err.strerror, str(target)) from err
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return None


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
        # SIGTERM arrived, as every rank agrees (rank 0's word): this callback takes last.ckpt and stops.
        self._sigterm = False

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

    @property
    def takes_sigterm_checkpoint(self) -> bool:
        """Whether this callback takes ``last.ckpt`` at the batch or epoch end after a SIGTERM (the
        epoch checkpoint of the latest state): the engine's Trainer lets Lightning's loops stop for
        the signal only once it has (:meth:`experiments.engine.Trainer.received_sigterm`)."""
        steps = self._every_n_train_steps  # private: lightning 2.6
        return self.monitor is None and steps == 0 and (self.every_n_epochs or 0) >= 1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.takes_sigterm_checkpoint:
            self._sigterm = _sigterm_agreed(trainer)
        steps_reached = self.takes_sigterm_checkpoint and 0 <= trainer.max_steps <= trainer.global_step
        if (self._sigterm or steps_reached) and not trainer.is_last_batch:
            # SIGTERM (preemption): Lightning stops at the end of this batch; max_steps reached
            # inside an epoch: training stops here. Take last.ckpt here, at the point where its own
            # step checkpoints are taken, so that a resume (with more max_steps) goes on inside the
            # epoch and loses nothing; taken at the epoch's end, Lightning would skip the rest of it.
            # (At an epoch's last batch it is taken at the epoch's end: see _stops_after_this_epoch.)
            if not self._should_skip_saving_checkpoint(trainer):  # private: lightning 2.6
                self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))  # private: lightning 2.6
            if self._sigterm:
                _checkpointed_for_sigterm(trainer)
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
        if self.takes_sigterm_checkpoint:
            self._sigterm = _sigterm_agreed(trainer)  # read by _stops_after_this_epoch
        if not self._sigterm and self._idle_at_this_epoch_end(trainer):
            return
        super().on_train_epoch_end(trainer, pl_module)
        if self._owed:
            self._owed = False
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)  # private: lightning 2.6
            self._save_last_checkpoint(trainer, candidates)  # private: lightning 2.6
        if self._sigterm:
            _checkpointed_for_sigterm(trainer)  # taken above (_stops_after_this_epoch): stop now

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
            and not _stops_after_this_epoch(trainer, self._sigterm)
        )

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:  # private: lightning 2.6
        if self.min_write_interval <= 0:
            return super()._save_checkpoint(trainer, filepath)  # private: lightning 2.6
        due = time.monotonic() - self._last_write >= self.min_write_interval
        if self.monitor is None:
            # The latest state (last.ckpt) is taken only when it is written: when the interval has
            # passed, and at the epoch where the run stops. Copying it at every epoch only to drop
            # the copy at the next cost a tenth of an XOR run. Every rank of a distributed run takes
            # part in a save (a barrier): rank 0's clock and signals decide for all, as Lightning's
            # own train_time_interval does, or ranks that decided otherwise would wait forever.
            write = due or _stops_after_this_epoch(trainer, self._sigterm)
            if trainer.world_size > 1:
                write = bool(trainer.strategy.broadcast(write, src=0))
            if write:
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
        # A checkpoint is data that anyone may have written, and Lightning later removes or reads
        # the files its state names (a "local://" or "http://" path included): only plain paths of
        # files in this callback's own folder are kept, and only scores that are numbers.
        state = own_state(state_dict, self.dirpath)
        pending = state.pop("pending", None)
        super().load_state_dict(state)
        if (
            isinstance(pending, dict)
            and _in_folder(pending.get("path"), self.dirpath)
            and isinstance(pending.get("checkpoint"), dict)
            and isinstance(pending["checkpoint"].get("state_dict"), dict)
        ):
            self._pending = (pending["path"], pending["checkpoint"])


def own_state(state: Any, dirpath: str | os.PathLike[str] | None) -> dict[str, Any]:
    """A ModelCheckpoint's saved state with every path outside ``dirpath`` and every score that is
    not a number taken out (as if never set), so that loading it can make Lightning touch no other file."""
    state = dict(state) if isinstance(state, dict) else {}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        state[key] = state.get(key) if _in_folder(state.get(key), dirpath) else ""
    for key in ("best_model_score", "kth_value", "current_score"):
        state[key] = _score(state.get(key))
    kept = state.get("best_k_models")
    state["best_k_models"] = {
        path: _score(score)
        for path, score in (kept.items() if isinstance(kept, dict) else ())
        if _in_folder(path, dirpath) and _score(score) is not None
    }
    if not isinstance(state.get("dirpath"), str):
        state.pop("dirpath", None)
    return state


def _in_folder(path: Any, dirpath: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a plain local path (no ``scheme://``) of a file directly in ``dirpath``."""
    if not isinstance(path, str) or not path or "://" in path or "\0" in path or not dirpath or "://" in str(dirpath):
        return False
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(dirpath)


def _score(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    return None


def _stops_after_this_epoch(trainer: L.Trainer, sigterm: bool) -> bool:
    """Whether fitting ends with the epoch that is ending (max_epochs, max_steps, a stop request,
    or ``sigterm``: Lightning stops once this epoch has ended)."""
    last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    stopping = trainer.should_stop or sigterm
    return bool(stopping or last_epoch or 0 <= trainer.max_steps <= trainer.global_step)


def _sigterm_agreed(trainer: L.Trainer) -> bool:
    """SIGTERM arrived, as rank 0 sees it (every rank of a distributed run calls this at the same
    point and gets the same answer, so that all of them save, and stop, together). The engine's
    Trainer tells it before its loops stop for it; Lightning's own Trainer stops at once."""
    pending = bool(getattr(trainer, "sigterm_pending", trainer.received_sigterm))
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([int(pending)], device=trainer.strategy.root_device)
        torch.distributed.broadcast(flag, src=0)
        pending = bool(flag.item())
    return pending


def _checkpointed_for_sigterm(trainer: L.Trainer) -> None:
    taken = getattr(trainer, "sigterm_checkpointed", None)
    if taken is not None:
        taken()


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
