"""What forecasting models share on (L, C) windows: reversible instance normalisation and channel independence."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from experiments.models.common import ShapeError


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., ICLR 2022).

    Each window is standardised by its own mean and standard deviation per channel before the
    model sees it, and the forecast is mapped back with the same statistics, so a model learns
    shapes rather than levels and copes with the drift between training and test periods.
    ``affine`` adds a learnable scale and shift per channel.
    """

    def __init__(self, num_channels: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))

    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` (N, L, C) standardised per window and channel, and the statistics to undo it."""
        mean = x.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        x = (x - mean) / std
        if self.affine:
            x = x * self.weight + self.bias
        return x, (mean, std)

    def denormalise(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``y`` (N, H, C_out) back to the level and scale of its window; C_out are the last channels."""
        mean, std = stats
        columns = y.shape[-1]
        if self.affine:
            y = (y - self.bias[-columns:]) / (self.weight[-columns:] + self.eps * self.eps)
        return y * std[..., -columns:] + mean[..., -columns:]


class WindowAdapter(nn.Module):
    """Optional RevIN and channel independence around a model's core on (L, C) -> (H, C_out) windows.

    Channel independence (as in PatchTST, Nie et al., ICLR 2023) forecasts every channel as its
    own univariate series with shared weights: the core sees (N * C, L, 1) and emits (N * C, H, 1).
    Where C_out is smaller than C (features MS), the forecast keeps the last C_out channels, the
    target's place in every window data module. With both options off this changes nothing.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        revin: bool = False,
        channel_independent: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.output_shape = output_shape
        self.channel_independent = channel_independent
        self.active = revin or channel_independent
        if self.active:
            if len(input_shape) != 2 or len(output_shape) != 2:
                raise ShapeError(
                    "revin and channel_independent need (L, C) windows in and (H, C) forecasts out, "
                    f"not input shape {list(input_shape)} and output shape {list(output_shape)}"
                )
            if output_shape[1] > input_shape[1]:
                raise ShapeError(f"a forecast of {output_shape[1]} channels from {input_shape[1]} input channels")
        self.revin = RevIN(input_shape[1]) if revin else None

    @property
    def core_input_shape(self) -> tuple[int, ...]:
        return (self.input_shape[0], 1) if self.channel_independent else self.input_shape

    @property
    def core_output_shape(self) -> tuple[int, ...]:
        return (self.output_shape[0], 1) if self.channel_independent else self.output_shape

    def forward(self, x: torch.Tensor, core: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``core`` applied to ``x`` (N, *input_shape) through normalisation and channel independence."""
        if not self.active:
            return core(x)
        batch, steps, channels = len(x), *self.input_shape
        x = x.reshape(batch, steps, channels)
        stats = None
        if self.revin is not None:
            x, stats = self.revin.normalise(x)
        if self.channel_independent:
            series = x.transpose(1, 2).reshape(batch * channels, steps, 1)
            y = core(series).reshape(batch, channels, -1).transpose(1, 2)[..., -self.output_shape[1] :].contiguous()
        else:
            y = core(x).reshape(batch, *self.output_shape)
        if stats is not None:
            y = self.revin.denormalise(y, stats)
        return y
