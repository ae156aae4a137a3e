from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from experiments.callbacks.forecasts import ForecastFigure
from experiments.data.spec import DataSpec
from experiments.tasks.base import OptimizerFactory, SchedulerFactory, Task
from experiments.tasks.registry import register_task_kind

LOSSES = ("mse", "mae", "huber")


def repeat_last(x: torch.Tensor, output_shape: tuple[int, ...]) -> torch.Tensor:
    """The naive forecast: the last input step of each output channel, repeated over the horizon.

    ``x`` is (N, L, C_in); the output channels are the last ``C_out`` of the input's, where every
    window data module puts the target.
    """
    horizon, channels = output_shape
    return x[:, -1:, -channels:].expand(len(x), horizon, channels)


@register_task_kind("forecasting")
class ForecastingTask(Task):
    """Multi-step forecasting of (L, C_in) windows into (H, C_out) horizons.

    The loss is ``loss="mse"`` (default), ``"mae"`` or ``"huber"`` (with ``huber_delta``). Every split
    logs ``loss``; validation and test also log ``mse`` and ``mae`` of the model, and
    ``naive_mse`` and ``naive_mae`` of the repeat-last-value baseline on the very same windows.
    The metrics accumulate sums over every window, so a last partial batch weighs what it holds.
    Its figure is :class:`~experiments.callbacks.ForecastFigure` (``forecasts.png``). It has no
    trivial-loss diagnosis: the repeat-last-value baseline above is its yardstick (a run that
    diverged is still said to have, by ``experiments.train``).
    """

    metric_names = ("mae", "mse")
    plots = (ForecastFigure,)

    @classmethod
    def from_spec(cls, spec: DataSpec, model: nn.Module, **options: Any) -> Task:
        return cls(model, spec.input_shape, spec.output_shape, **options)

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        loss: str = "mse",
        huber_delta: float = 1.0,
        **task_options: Any,
    ) -> None:
        super().__init__(model, optimizer, scheduler, **task_options)
        if len(input_shape) != 2 or len(output_shape) != 2:
            raise ValueError(
                f"forecasting needs (L, C) windows and (H, C) horizons, got {list(input_shape)} -> {list(output_shape)}"
            )
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
        if huber_delta <= 0:
            raise ValueError(f"huber_delta must be positive, got {huber_delta}")
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.loss_name = loss
        self.huber_delta = huber_delta
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{name}": metric()
                for split in ("val", "test")
                for name, metric in (
                    ("mse", torchmetrics.MeanSquaredError),
                    ("mae", torchmetrics.MeanAbsoluteError),
                    ("naive_mse", torchmetrics.MeanSquaredError),
                    ("naive_mae", torchmetrics.MeanAbsoluteError),
                )
            }
        )

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "mae":
            return F.l1_loss(prediction, target)
        if self.loss_name == "huber":
            return F.huber_loss(prediction, target, delta=self.huber_delta)
        return F.mse_loss(prediction, target)

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, target = batch
        x = x.reshape(len(x), *self.input_shape)
        prediction = self.model(x)
        # Windows are strided views of one series; torchmetrics flattens with view().
        target = target.to(prediction.dtype).reshape(prediction.shape).contiguous()
        loss = self.loss(prediction, target)
        values: dict[str, Any] = {"loss": loss}
        if split != "train":
            naive = repeat_last(x, self.output_shape).to(prediction.dtype).contiguous()
            for name, guess in (("", prediction.detach()), ("naive_", naive)):
                for kind in ("mse", "mae"):
                    metric = cast(torchmetrics.Metric, self.metrics[f"{split}_{name}{kind}"])
                    metric.update(guess, target)
                    values[f"{name}{kind}"] = metric
        self.log_split(split, values, batch_size=len(x))
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return {"prediction": self.model(x.reshape(len(x), *self.input_shape))}
