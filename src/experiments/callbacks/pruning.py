"""Pruning a trial of an Optuna sweep from its validation curve."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from experiments.errors import UserError
from experiments.sweeps import storage_error, storage_problem


class OptunaPruning(Callback):
    """Report the monitored validation value to the trial each epoch; stop the run when Optuna prunes it.

    Our own few lines rather than optuna-integration's PyTorchLightningPruningCallback, which is
    not installed with Optuna 5 and checks for Lightning versions by name.

    The run stops with one line (a failed trial, no traceback) when its trial was failed by another
    worker meanwhile (its heartbeats came late: a busy or stopped process; the sweep runs its
    parameters again as a new trial), or when the study's database went away.
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
        # Optuna is imported by sweeps only (0.4 s)
        from optuna import TrialPruned
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            if math.isfinite(value):
                self.trial.report(value, step=epoch)
            prune = not math.isfinite(value) or self.trial.should_prune()
        except UpdateFinishedTrialError:
            raise UserError(
                f"trial {self.trial.number} was failed by another worker of the sweep while it ran (its "
                "heartbeats came late: a busy or stopped process); its parameters run again as a new trial"
            ) from None
        except Exception as err:
            if storage_error(err) is None:
                raise
            raise UserError(
                f"the study's database failed: {storage_problem(err)}; run the sweep's command again once "
                "it is back (the study continues)"
            ) from None
        if prune:
            raise TrialPruned(f"pruned at epoch {epoch + 1}: {self.monitor}={value:.4g}")
