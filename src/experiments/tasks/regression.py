from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from experiments.tasks.base import OptimizerFactory, SchedulerFactory, Task


class RegressionTask(Task):
    """Regression with mean squared error as the loss; logs ``loss`` (MSE) and ``mae`` per split."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **task_options: Any,
    ) -> None:
        super().__init__(model, optimizer, scheduler, **task_options)
        self.mae = nn.ModuleDict(
            {f"{split}_mae": torchmetrics.MeanAbsoluteError() for split in ("val", "test")}
        )

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, target = batch
        prediction = self.model(x)
        target = target.to(prediction.dtype).reshape(prediction.shape)
        loss = F.mse_loss(prediction, target)
        if split == "train":  # a plain tensor per batch (see Task.log_split)
            mae: Any = (prediction.detach() - target).abs().mean()
        else:
            mae = self.mae[f"{split}_mae"]
            mae.update(prediction.detach(), target)
        self.log_split(split, {"loss": loss, "mae": mae}, batch_size=len(x))
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return {"prediction": self.model(x)}
