"""The test set's confusion matrix, as an image in TensorBoard (classification runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import lightning as L

from experiments.callbacks.figures import FigureCallback
from experiments.engine.tensorboard import log_figure, tensorboard_loggers
from experiments.plotting import pyplot


class ConfusionMatrix(FigureCallback):
    """The confusion matrix of the test set, as an image in TensorBoard (``test/confusion_matrix``).

    Drawn for the task kinds that list it in their ``plots`` (classification: a module with
    ``logits`` and ``num_classes``), and only for a run that logs to TensorBoard: evaluate and
    predict, which have no logger, pay nothing. The test batches are classified once more here (no
    gradients), as the test step returns only its loss.
    """

    def __init__(self) -> None:
        self._counts: Any = None

    def _active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        return self.draws_for(trainer, pl_module) and bool(tensorboard_loggers(trainer))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        classes = int(getattr(pl_module, "num_classes", 0))
        self._counts = torch.zeros(classes, classes, dtype=torch.long) if self._active(trainer, pl_module) else None

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._counts is None:
            return
        import torch

        x, target = batch[0], batch[1]
        # The kinds that list this figure classify: their logits are (N,) binary or (N, C).
        classify = cast(Any, pl_module)
        with torch.no_grad():
            logits = classify.logits(x)
        predicted = (logits >= 0).long() if logits.ndim == 1 else logits.argmax(dim=-1)
        classes = len(self._counts)
        pairs = target.reshape(-1).long().cpu() * classes + predicted.reshape(-1).cpu()
        self._counts += torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._counts is None:
            return
        figure = plot_confusion_matrix(self._counts.numpy(), title=f"{Path(trainer.default_root_dir).name}: test set")
        log_figure(trainer, "test/confusion_matrix", figure)
        pyplot().close(figure)
        self._counts = None


def plot_confusion_matrix(counts: Any, title: str = "") -> Any:
    """A confusion matrix (rows: true class, columns: predicted class) with its counts written in."""
    plt = pyplot()

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
            ax.text(
                j,
                i,
                str(int(counts[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if counts[i, j] > peak / 2 else "black",
            )
    total = counts.sum()
    accuracy = counts.trace() / total if total else float("nan")
    ax.set_title(f"{title}\n{int(total)} samples, accuracy {accuracy:.4f}".strip(), fontsize=9)
    fig.tight_layout()
    return fig
