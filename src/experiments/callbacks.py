"""Callbacks: a run's history as files (``history.csv``, ``learning_curves.png``), its random
state in checkpoints for exact resumes, a guard that stops it when the loss stops being finite,
a progress bar in a terminal, and a confusion matrix of the test set in TensorBoard.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar

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
            figure = plot_learning_curves(self.rows, self.dirpath / "learning_curves.png", keep_open=True)
            _log_figure(trainer, "learning_curves", figure)  # TensorBoard's IMAGES tab, too
            figure.clear()
            import matplotlib.pyplot as plt

            plt.close(figure)

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


def _log_figure(trainer: L.Trainer, tag: str, figure: Any) -> None:
    """A matplotlib figure as an image of every TensorBoard logger of ``trainer``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, global_step=trainer.global_step, close=False)
            logger.experiment.flush()


def plot_learning_curves(rows: Sequence[dict[str, Any]], path: Path, keep_open: bool = False) -> Any:
    """Loss, and the main metric where there is one, of train and validation against epochs;
    saved to ``path``. Returns the figure when ``keep_open`` (the caller closes it)."""
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
    if keep_open:
        return fig
    plt.close(fig)
    return None


class ConfusionMatrix(Callback):
    """The confusion matrix of the test set, as an image in TensorBoard (``test/confusion_matrix``).

    Classification tasks only (a module with ``logits`` and ``num_classes``), and only for a run
    that logs to TensorBoard: evaluate and predict, which have no logger, pay nothing. The test
    batches are classified once more here (no gradients), as the test step returns only its loss.
    """

    def __init__(self) -> None:
        self._counts: Any = None

    def _active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        from lightning.pytorch.loggers import TensorBoardLogger

        return (trainer.is_global_zero and hasattr(pl_module, "logits") and hasattr(pl_module, "num_classes")
                and any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        classes = int(getattr(pl_module, "num_classes", 0))
        self._counts = torch.zeros(classes, classes, dtype=torch.long) if self._active(trainer, pl_module) else None

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._counts is None:
            return
        import torch

        x, target = batch[0], batch[1]
        with torch.no_grad():
            logits = pl_module.logits(x)
        predicted = (logits >= 0).long() if logits.ndim == 1 else logits.argmax(dim=-1)
        classes = len(self._counts)
        pairs = target.reshape(-1).long().cpu() * classes + predicted.reshape(-1).cpu()
        self._counts += torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._counts is None:
            return
        figure = plot_confusion_matrix(self._counts.numpy(), title=f"{Path(trainer.default_root_dir).name}: test set")
        _log_figure(trainer, "test/confusion_matrix", figure)
        import matplotlib.pyplot as plt

        plt.close(figure)
        self._counts = None


def plot_confusion_matrix(counts: Any, title: str = "") -> Any:
    """A confusion matrix (rows: true class, columns: predicted class) with its counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = len(counts)
    size = 2.5 + 0.45 * classes
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    peak = counts.max() if counts.size else 0
    for i in range(classes):
        for j in range(classes):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > peak / 2 else "black")
    total = counts.sum()
    accuracy = counts.trace() / total if total else float("nan")
    ax.set_title(f"{title}\n{int(total)} samples, accuracy {accuracy:.4f}".strip(), fontsize=9)
    fig.tight_layout()
    return fig


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


class ProgressBar(LightningProgressBar):
    """A bar for training, validation, test and predict when stdout is a terminal; nothing otherwise.

    Redrawn at most every ``refresh_seconds`` (by the clock, not every N batches: one check of the
    clock per batch is all it costs between draws), and cleared when its loop ends, so that the
    terminal keeps History's one line per epoch, as a file or a pipe does. The training bar counts
    batches of the epoch, also when ``steps_per_execution`` hands Lightning K of them at a time.
    """

    def __init__(self, refresh_seconds: float = 0.25, enabled: bool | None = None) -> None:
        super().__init__()
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
        self._bar = tqdm(desc=description, total=total, unit=unit, file=sys.stdout, leave=False, disable=False,
                         ncols=columns, nrows=lines, mininterval=0, smoothing=0.3)
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

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
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

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._done += 1
        self._advance(self._done)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open("testing", sum(trainer.num_test_batches))
        self._done = 0

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._done += 1
        self._advance(self._done)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open("predicting", sum(trainer.num_predict_batches))
        self._done = 0

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._done += 1
        self._advance(self._done)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

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
