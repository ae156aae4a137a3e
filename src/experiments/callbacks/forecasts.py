"""Forecasts against the truth for a few test windows: ``forecasts.png`` and TensorBoard (forecasting runs)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch

from experiments.callbacks.figures import FigureCallback
from experiments.engine.tensorboard import log_png, tensorboard_loggers
from experiments.plotting import pyplot
from experiments.runs import write_atomic

Example = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ForecastFigure(FigureCallback):
    """After testing, forecasts against the truth for ``windows`` test windows, spread over the test
    period (the last output channel, the target, with the input and the repeat-last-value forecast),
    saved as ``filename`` in the run directory and logged to TensorBoard as ``test/forecasts``.

    The first window of every test batch is forecast once more here (no gradients): the test step
    returns only its loss.
    """

    def __init__(self, windows: int = 4, filename: str = "forecasts.png") -> None:
        if windows < 1:
            raise ValueError(f"windows must be at least 1, got {windows}")
        self.windows = windows
        self.filename = filename
        self._examples: list[Example] | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._examples = [] if self.draws_for(trainer, pl_module) else None

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._examples is None:
            return
        # The kinds that list this figure forecast (L, C) windows into (H, C) horizons.
        input_shape = cast(tuple[int, ...], pl_module.input_shape)
        output_shape = cast(tuple[int, ...], pl_module.output_shape)
        parameter = next(pl_module.parameters())
        x = batch[0][:1].reshape(1, *input_shape).to(parameter.dtype)
        with torch.no_grad():
            prediction = pl_module(x).reshape(output_shape)
        target = batch[1][0].reshape(output_shape)
        self._examples.append((x[0].cpu(), target.cpu(), prediction.cpu()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        examples, self._examples = self._examples, None
        if not examples:
            return
        count = min(self.windows, len(examples))
        picks = [round(i * (len(examples) - 1) / max(count - 1, 1)) for i in range(count)]
        figure = plot_forecasts([examples[i] for i in picks])
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        png = io.BytesIO()  # written in one piece: a full disk leaves no half picture
        figure.savefig(png, format="png", dpi=100)
        write_atomic(run_dir / self.filename, lambda handle: handle.write(png.getbuffer()), binary=True)
        if tensorboard_loggers(trainer):
            log_png(trainer, "test/forecasts", png.getvalue())
        pyplot().close(figure)


def plot_forecasts(examples: list[Example]) -> Any:
    """One panel per window: its input, the truth and the forecast of the last channel (the target)."""
    plt = pyplot()

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
