"""A callback of one's own: stop as soon as a validation metric reaches a target."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopAtTarget(Callback):
    """Stops training once ``monitor`` (e.g. ``val/acc``) reaches ``target``, and says so in one line."""

    def __init__(self, monitor: str = "val/acc", target: float = 1.0) -> None:
        self.monitor, self.target = monitor, target

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking and float(value) >= self.target:
            if not trainer.should_stop and trainer.is_global_zero:
                print(
                    f"{self.monitor}={float(value):.4f} reached {self.target} at epoch {trainer.current_epoch + 1}; stopping"
                )
            trainer.should_stop = True
