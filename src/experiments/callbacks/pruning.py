"""Pruning a trial of an Optuna sweep from its validation curve."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class OptunaPruning(Callback):
    """Report the monitored validation value to the trial each epoch; stop the run when Optuna prunes it.

    Our own few lines rather than optuna-integration's PyTorchLightningPruningCallback, which is
    not installed with Optuna 5 and checks for Lightning versions by name.
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor

    # At the end of the training epoch (after its validation) rather than of validation, so that
    # History, placed before this callback, has written the epoch's row when the run stops.
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = trainer.current_epoch
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        if not math.isfinite(value) or self.trial.should_prune():
            from optuna import TrialPruned  # Optuna is imported by sweeps only (0.4 s)

            raise TrialPruned(f"pruned at epoch {epoch + 1}: {self.monitor}={value:.4g}")
