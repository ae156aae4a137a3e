from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from experiments.tasks.base import OptimizerFactory, SchedulerFactory, Task

LOSSES = ("mse", "mae", "huber")
FORECAST_FIGURE = "forecasts.png"


def repeat_last(x: torch.Tensor, output_shape: tuple[int, ...]) -> torch.Tensor:
    """The naive forecast: the last input step of each output channel, repeated over the horizon.

    ``x`` is (N, L, C_in); the output channels are the last ``C_out`` of the input's, where every
    window data module puts the target.
    """
    horizon, channels = output_shape
    return x[:, -1:, -channels:].expand(len(x), horizon, channels)


class ForecastingTask(Task):
    """Multi-step forecasting of (L, C_in) windows into (H, C_out) horizons.

    The loss is ``loss="mse"`` (default), ``"mae"`` or ``"huber"`` (with ``huber_delta``). Every split
    logs ``loss``; validation and test also log ``mse`` and ``mae`` of the model, and
    ``naive_mse`` and ``naive_mae`` of the repeat-last-value baseline on the very same windows.
    The metrics accumulate sums over every window, so a last partial batch weighs what it holds.
    After testing in a run with loggers, a figure of forecasts against the truth for
    ``plot_windows`` test windows (the last output channel, the target) goes to TensorBoard and to
    ``forecasts.png`` in the trainer's ``default_root_dir`` (the run directory).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        loss: str = "mse",
        huber_delta: float = 1.0,
        plot_windows: int = 4,
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
        self.plot_windows = plot_windows
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
        self._examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

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
                    metric = self.metrics[f"{split}_{name}{kind}"]
                    metric.update(guess, target)
                    values[f"{name}{kind}"] = metric
        if split == "test" and self.plot_windows > 0:
            # The first window of every batch: spread over the test period at no extra cost.
            self._examples.append((x[0].detach().cpu(), target[0].cpu(), prediction[0].detach().cpu()))
        self.log_split(split, values, batch_size=len(x))
        return loss

    def on_test_epoch_start(self) -> None:
        self._examples = []

    def on_test_epoch_end(self) -> None:
        # Only a logged run (train) draws: evaluate and predict leave the run's files alone.
        if not self._examples or not self.trainer.is_global_zero or not self.trainer.loggers:
            return
        count = min(self.plot_windows, len(self._examples))
        picks = [round(i * (len(self._examples) - 1) / max(count - 1, 1)) for i in range(count)]
        figure = plot_forecasts([self._examples[i] for i in picks])
        run_dir = Path(self.trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(run_dir / FORECAST_FIGURE, dpi=100)
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("test/forecasts", figure, global_step=self.global_step)
        import matplotlib.pyplot as plt

        plt.close(figure)
        self._examples = []

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return {"prediction": self.model(x.reshape(len(x), *self.input_shape))}


def plot_forecasts(examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Any:
    """One panel per window: its input, the truth and the forecast of the last channel (the target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(examples), 1, figsize=(9, 2.4 * len(examples)), squeeze=False)
    for ax, (x, target, prediction) in zip(axes[:, 0], examples):
        steps = x.shape[0]
        horizon = range(steps, steps + target.shape[0])
        ax.plot(range(steps), x[:, -1].float(), color="0.5", label="input")
        ax.plot(horizon, target[:, -1].float(), color="C0", label="actual")
        ax.plot(horizon, prediction[:, -1].float(), color="C1", label="predicted")
        ax.plot(horizon, x[-1:, -1].float().expand(target.shape[0]), ":", color="0.3", label="repeat last")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", ncol=4, fontsize="small")
    axes[-1, 0].set_xlabel("step (scaled values, last channel)")
    fig.tight_layout()
    return fig
