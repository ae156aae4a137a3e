from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from experiments.data.spec import DataSpec
from experiments.diagnosis import target_variance
from experiments.tasks.base import OptimizerFactory, SchedulerFactory, Task
from experiments.tasks.registry import register_task_kind


@register_task_kind("regression")
class RegressionTask(Task):
    """Regression with mean squared error as the loss; logs ``loss`` (MSE) and ``mae`` per split.

    The trivial predictor is the mean target (its loss is the target variance).
    """

    metric_names = ("mae",)

    @classmethod
    def trivial_loss(cls, targets: torch.Tensor, spec: DataSpec) -> float | None:
        return target_variance(targets)

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **task_options: Any,
    ) -> None:
        super().__init__(model, optimizer, scheduler, **task_options)
        self.mae = nn.ModuleDict({f"{split}_mae": torchmetrics.MeanAbsoluteError() for split in ("val", "test")})

    def sample_metrics(self, outputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mae": (outputs - target).abs().reshape(len(outputs), -1).mean(dim=1)}

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, target = batch
        prediction = self.model(x)
        target = target.to(prediction.dtype).reshape(prediction.shape)
        loss = F.mse_loss(prediction, target)
        if split == "train":
            self.log_split(split, {"loss": loss}, batch_size=len(x))
            self.log_sample_metrics(split, prediction.detach(), target)
            return loss
        mae: Any = self.mae[f"{split}_mae"]
        mae.update(prediction.detach(), target)
        self.log_split(split, {"loss": loss, "mae": mae}, batch_size=len(x))
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return {"prediction": self.model(x)}
