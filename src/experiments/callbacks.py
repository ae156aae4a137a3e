"""Callbacks: a run's history as files (``history.csv``, ``learning_curves.png``), its random
state in checkpoints for exact resumes, and a guard that stops it when the loss stops being finite.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from experiments.errors import UserError
from experiments.runs import write_atomic


class History(Callback):
    """One row per epoch of every logged epoch metric, written to ``history.csv`` as training goes.

    ``parameters`` names single-number model parameters (``w`` and ``b`` of the one-neuron model)
    to record after each epoch's update. Each row is also printed, restricted to ``print_columns``
    when given, so that a run reads like a Keras log. ``history.csv`` is rewritten at most every
    ``min_write_interval`` seconds while training (a run of 300 one-batch epochs would otherwise
    spend a tenth of its time rewriting it) and always when fitting ends or fails; the rows are
    also in every checkpoint. The learning curves are drawn into ``learning_curves.png`` when
    fitting ends.
    """

    def __init__(
        self,
        dirpath: str,
        parameters: Sequence[str] = (),
        print_columns: Sequence[str] | None = None,
        verbose: bool = True,
        min_write_interval: float = 1.0,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.min_write_interval = min_write_interval
        self._written = -math.inf
        self.parameters = list(parameters)
        self.print_columns = list(print_columns) if print_columns is not None else None
        self.verbose = verbose
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()  # a run resumed inside an epoch starts timing here

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}
        for name, value in sorted(trainer.callback_metrics.items()):
            row[name] = float(value)
        model = getattr(pl_module, "model", pl_module)
        for name in self.parameters:
            value = float(model.get_parameter(name).detach().reshape(-1)[0])
            pl_module.log(name, value, on_epoch=True, on_step=False)
            row[name] = value
        row["seconds"] = time.perf_counter() - self._epoch_start
        # The prefetched validation of the next epoch doesn't exist yet; rows of resumed runs
        # replace the epochs they repeat.
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            if time.monotonic() - self._written >= self.min_write_interval:
                self._write_csv()
            if self.verbose:
                self._print(row)

    def _columns(self) -> list[str]:
        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        return list(columns)

    def _write_csv(self) -> None:
        path = self.dirpath / "history.csv"
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(handle: Any) -> None:
            writer = csv.DictWriter(handle, fieldnames=self._columns())
            writer.writeheader()
            writer.writerows(self.rows)

        write_atomic(path, write)
        self._written = time.monotonic()

    def _print(self, row: dict[str, Any]) -> None:
        columns = self.print_columns or [c for c in row if c not in ("epoch", "seconds")]
        if len(self.rows) == 1 or row is self.rows[0]:
            print(" ".join(["epoch", *columns]), flush=True)
        values = [_fmt(row.get(c)) for c in columns]
        print(" ".join([str(row["epoch"]), *values]), flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            self._write_csv()
            plot_learning_curves(self.rows, self.dirpath / "learning_curves.png")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A run stopped early (pruned by a sweep, or crashed) still shows how far it got.
        self.on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def plot_learning_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss, and the main metric where there is one, of train and validation against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    metric = next((m for m in ("acc", "mae", "mse") if any(f"val/{m}" in r for r in rows)), None)
    panels = ["loss"] + ([metric] if metric else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, name in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(e, r[f"{split}/{name}"]) for e, r in zip(epochs, rows) if f"{split}/{name}" in r]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=f"{split}/{name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(path.parent.name)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


class ResumeState(Callback):
    """Saves what a Lightning checkpoint lacks for an exact resume, and puts it back.

    Lightning saves no random state, and restores a train loader's position only from a
    checkpoint taken inside an epoch, not from one taken at its end. This saves the random number
    generators (Python, NumPy, torch, CUDA) and the train loader's position in every checkpoint, so
    that dropout, shuffling and every other random draw after a resume are the ones the run would
    have made without the interruption. Stored as lists and tensors, so the checkpoint still loads
    with ``torch.load(weights_only=True)``. Put back when training starts rather than when the
    checkpoint is read, so that nothing Lightning does in between can draw from them first.
    """

    KEY = "resume_state"

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        kind, keys, position, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "train_loaders": [loader.state_dict() for loader in _train_loaders(trainer)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[self.KEY] = state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._to_restore = checkpoint.get(self.KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        import random

        import numpy as np
        import torch

        state, self._to_restore = self._to_restore, None
        random.setstate(state["python"])
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        for loader, loader_state in zip(_train_loaders(trainer), state["train_loaders"]):
            loader.load_state_dict(loader_state)


def _train_loaders(trainer: L.Trainer) -> list[Any]:
    """The train loaders that can save their position (only their iterators have started)."""
    loaders = trainer.train_dataloader
    candidates = list(loaders.values()) if isinstance(loaders, dict) else loaders if isinstance(loaders, list) else [loaders]
    return [d for d in candidates if hasattr(d, "state_dict") and hasattr(d, "load_state_dict")]


class NonFiniteError(UserError):
    """Training produced a NaN or infinite loss or weights; the last good checkpoint is kept."""


class FiniteGuard(Callback):
    """Stops a run whose loss or weights stop being finite, before they reach a checkpoint.

    The loss is checked before its backward pass, so the weights are never updated from it; the
    weights are checked whenever a checkpoint is about to be written, so a step whose finite loss
    blew the weights up cannot replace the last good ``last.ckpt``. Lightning's own
    ``detect_anomaly`` finds where a NaN appears but does not stop the run cleanly, and
    ``EarlyStopping(check_finite=True)`` only looks at the monitored metric once an epoch.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Any) -> None:
        import torch

        # One host read (0.2 us) instead of three tensor ops (7 us) for the usual scalar loss.
        bad = not (math.isfinite(loss.item()) if loss.numel() == 1 else bool(torch.isfinite(loss).all()))
        if trainer.world_size > 1:  # every rank stops at the same step, none waits for the others
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteError(
                f"loss became {float(loss.detach())} at step {trainer.global_step + 1} "
                f"(epoch {trainer.current_epoch + 1}); stopped without updating the weights; "
                f"{_last_good(trainer)}; lower optimizer.lr or set trainer.gradient_clip_val=1.0"
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        import torch

        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # DDP keeps the weights equal on every rank, so every rank decides the same
            raise NonFiniteError(
                f"weights became non-finite ({', '.join(bad[:3])}) by step {trainer.global_step} "
                f"(epoch {trainer.current_epoch + 1}); stopped before writing them to a checkpoint; "
                f"{_last_good(trainer)}; lower optimizer.lr or set trainer.gradient_clip_val=1.0"
            )


def _last_good(trainer: L.Trainer) -> str:
    paths = [
        Path(c.last_model_path or c.best_model_path)
        for c in trainer.checkpoint_callbacks
        if getattr(c, "last_model_path", None) or getattr(c, "best_model_path", None)
    ]
    existing = [p for p in paths if p.is_file()]
    if not existing:
        return "no checkpoint was written before it"
    return f"the last good checkpoint is {max(existing, key=lambda p: p.stat().st_mtime)}"
