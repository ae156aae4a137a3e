from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from experiments.tasks.base import OptimizerFactory, SchedulerFactory, Task


class ClassificationTask(Task):
    """Binary (one logit, binary cross-entropy) or multi-class (C logits, cross-entropy) classification.

    The model returns logits; probabilities come from :meth:`predict_step`. Logs ``loss`` and
    ``acc`` per split.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        **task_options: Any,
    ) -> None:
        super().__init__(model, optimizer, scheduler, **task_options)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.binary = num_classes == 2
        self.label_smoothing = label_smoothing
        metric = (
            (lambda: torchmetrics.classification.BinaryAccuracy())
            if self.binary
            else (lambda: torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro"))
        )
        # Training accuracy is a plain tensor per batch (see Task.log_split); no metric object.
        self.accuracy = nn.ModuleDict({f"{split}_acc": metric() for split in ("val", "test")})

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N,) for binary and (N, C) for multi-class classification."""
        out = self.model(x)
        return out.reshape(len(out)) if self.binary else out

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def loss_and_probabilities(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.sigmoid(logits) if self.binary else logits.softmax(dim=-1)
        return self.loss(logits, target), probabilities

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, target = batch
        logits = self.logits(x)
        if split == "train":
            loss = self.loss(logits, target)
            predicted = logits.detach() >= 0 if self.binary else logits.detach().argmax(dim=-1)
            accuracy: Any = (predicted == target).float().mean()
        else:
            loss, probabilities = self.loss_and_probabilities(logits, target)
            accuracy = self.accuracy[f"{split}_acc"]
            accuracy.update(probabilities.detach(), target)
        self.log_split(split, {"loss": loss, "acc": accuracy}, batch_size=len(x))
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self.logits(x)
        if self.binary:
            probabilities = torch.sigmoid(logits)
            return {"probability": probabilities, "prediction": (probabilities >= 0.5).long()}
        probabilities = logits.softmax(dim=-1)
        return {"probability": probabilities, "prediction": probabilities.argmax(dim=-1)}
