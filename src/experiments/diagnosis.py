"""A verdict on a run's learning curves: diverged, overfitting, underfitting or fine, with the primer's
remedies.

The rules read the per-epoch rows of ``history.csv`` (``train/loss``, ``val/loss``) and compare them
with the loss of a trivial predictor, which the task kind defines (``Task.trivial_loss``: the class
frequencies for classification, the mean target for regression), so that the same
thresholds hold for XOR, MNIST and regression alike. No library offers this; the rules are ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

# The training loss ending this many times above the trivial loss: the steps made it worse than
# predicting nothing, the mark of a learning rate far too large (a diverging run).
DIVERGE_FACTOR = 10.0
# ... or ending above the trivial loss and this many times above its own lowest value: it had
# learned something and then blew up.
DIVERGE_RISE = 2.0
# Both losses above this fraction of the trivial loss: the model has barely learned anything.
UNDERFIT_FRACTION = 0.5
# Validation loss this far (relative) above its own minimum, while the training loss kept falling...
RISE_FRACTION = 0.1
# ...counts only with a train/validation gap of at least this fraction of the trivial loss
# (small rises of a well-fitted model are noise, not overfitting).
RISE_GAP_FRACTION = 0.05
# A gap this large (fraction of the trivial loss) is overfitting even if validation never rose.
GAP_FRACTION = 0.1

REMEDIES = {
    "diverged": (
        "the steps are too large: lower optimizer.lr (by 10x at a time), or clip the gradients "
        "(trainer.gradient_clip_val=1.0)"
    ),
    "overfitting": (
        "regularise: dropout (model.dropout=0.3), weight decay (optimizer=adamw optimizer.weight_decay=0.05), "
        "early stopping (callbacks=[default,early_stopping]), augmentation (data.augment=true for MNIST) "
        "or more training data"
    ),
    "underfitting": (
        "fit harder: more capacity (e.g. model.hidden=[256]), more epochs (trainer.max_epochs), "
        "a better learning rate, or less regularisation (lower model.dropout and optimizer.weight_decay)"
    ),
    "fine": "no sign of over- or under-fitting",
}


@dataclass(frozen=True)
class Diagnosis:
    """The verdict (``diverged``, ``overfitting``, ``underfitting`` or ``fine``), why, and what to try."""

    verdict: str
    reason: str
    remedies: str
    trivial_loss: float

    @property
    def message(self) -> str:
        return f"diagnosis: {self.verdict}: {self.reason}; {self.remedies}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


def label_entropy(targets: torch.Tensor, num_classes: int | None = None) -> float:
    """The cross-entropy of always predicting the class frequencies of ``targets``."""
    counts = torch.bincount(targets.reshape(-1).long(), minlength=num_classes or 0).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def target_variance(targets: torch.Tensor) -> float:
    """The mean squared error of always predicting the mean of ``targets``."""
    values = targets.double().reshape(len(targets), -1)
    return float(values.var(dim=0, unbiased=False).mean())


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    points = []
    for row in rows:
        value = row.get(key)
        if value is not None and value != "" and math.isfinite(float(value)):
            points.append((int(row["epoch"]), float(value)))
    return points


def diagnose(rows: Sequence[dict[str, Any]], baseline: float) -> Diagnosis | None:
    """Judge the learning curves in ``rows`` (one dict per epoch) against the trivial loss ``baseline``."""
    train = _series(rows, "train/loss")
    val = _series(rows, "val/loss")
    if not train or baseline <= 0:
        return None

    def verdict(name: str, reason: str) -> Diagnosis:
        return Diagnosis(name, reason, REMEDIES[name], round(baseline, 6))

    final_train = train[-1][1]
    lowest_epoch, lowest_train = min(train, key=lambda p: p[1])
    if final_train > DIVERGE_FACTOR * baseline:
        return verdict(
            "diverged",
            f"train/loss {final_train:.4g} after {train[-1][0]} epoch(s) is over {DIVERGE_FACTOR:g} times "
            f"the trivial loss {baseline:.4g}",
        )
    if final_train > baseline and final_train > DIVERGE_RISE * lowest_train:
        return verdict(
            "diverged",
            f"train/loss rose from {lowest_train:.4g} (epoch {lowest_epoch}) to {final_train:.4g} "
            f"(epoch {train[-1][0]}), above the trivial loss {baseline:.4g}",
        )
    best_epoch, best_val = min(val, key=lambda p: p[1]) if val else (train[-1][0], final_train)
    if final_train >= UNDERFIT_FRACTION * baseline and best_val >= UNDERFIT_FRACTION * baseline:
        return verdict(
            "underfitting",
            f"train/loss {final_train:.4g} and best val/loss {best_val:.4g} after {train[-1][0]} epoch(s) "
            f"are both near the trivial loss {baseline:.4g} (over {UNDERFIT_FRACTION:.0%} of it)",
        )
    if val:
        final_epoch, final_val = val[-1]
        gap = final_val - final_train
        train_at_best = dict(train).get(best_epoch, final_train)
        rose = final_val > best_val * (1 + RISE_FRACTION) and final_train < train_at_best
        if rose and gap > RISE_GAP_FRACTION * baseline:
            return verdict(
                "overfitting",
                f"val/loss turned up from {best_val:.4g} (epoch {best_epoch}) to {final_val:.4g} "
                f"(epoch {final_epoch}) while train/loss fell from {train_at_best:.4g} to {final_train:.4g}",
            )
        if gap > GAP_FRACTION * baseline:
            return verdict(
                "overfitting",
                f"val/loss {final_val:.4g} is {gap:.4g} above train/loss {final_train:.4g}, "
                f"a gap over {GAP_FRACTION:.0%} of the trivial loss {baseline:.4g}",
            )
    return verdict(
        "fine",
        f"train/loss {final_train:.4g}, best val/loss {best_val:.4g} (trivial loss {baseline:.4g})",
    )
