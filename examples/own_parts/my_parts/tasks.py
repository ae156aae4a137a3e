"""A task module of one's own: binary classification with the focal loss (Lin et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from experiments.tasks import ClassificationTask
from experiments.tasks.base import OptimizerFactory, SchedulerFactory


class FocalTask(ClassificationTask):
    """Like the built-in classification task (same metrics, same predictions), with the focal loss
    ``(1 - p_t)^gamma * BCE``, which weighs down the examples that are already right.

    The framework passes the model, the optimizer and scheduler factories and the monitor, plus
    ``num_classes`` because the constructor names it (it would also pass ``spec``, ``input_shape``
    or ``output_shape``). ``gamma`` is this task's own option (``task.gamma=...``), checked against
    this signature like every config key.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        gamma: float = 2.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        monitor: str = "val/loss",
    ) -> None:
        super().__init__(model, num_classes=num_classes, optimizer=optimizer, scheduler=scheduler, monitor=monitor)
        if num_classes != 2:
            raise ValueError(f"FocalTask is binary; the data has {num_classes} classes")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = torch.exp(-bce)
        return ((1 - p_t) ** self.gamma * bce).mean()
