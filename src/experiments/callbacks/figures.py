"""What every figure callback shares: it draws only for the task kinds that list it in their ``plots``."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class FigureCallback(Callback):
    """A callback that draws a figure of a run. Composed for every run (``conf/callbacks/``), it
    draws only when the task's kind lists its class in ``Task.plots`` (a confusion matrix means
    nothing to a forecast), only on rank zero, and only in a run that logs (``train``: evaluate and
    predict, which have no logger, leave the run's files alone and pay nothing)."""

    def draws_for(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        plots = tuple(getattr(pl_module, "plots", ()))
        return bool(plots) and isinstance(self, plots) and trainer.is_global_zero and bool(trainer.loggers)
