"""What any model can be composed with on (L, C) windows: reversible instance normalisation, channel
independence and segments (config: the ``window`` node; see :func:`experiments.config.build`)."""

from __future__ import annotations

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


class Windowed(nn.Module):
    """Any plain model, composed with RevIN, channel independence and segments on (L, C) -> (H, C_out)
    windows. The model itself knows nothing of them: it is built for :meth:`core_shapes`.

    ``revin`` standardises each window per channel and maps the forecast back (:class:`RevIN`).
    ``channel_independent`` (as in PatchTST, Nie et al., ICLR 2023) forecasts every channel as its
    own univariate series with shared weights: the model sees (N * C, ...) windows of one channel and
    emits (N * C, H, 1); where C_out is smaller than C (features MS), the forecast keeps the last
    C_out channels, the target's place in every window data module. ``patch_len`` > 1 hands the
    model segments of that many steps as its steps, (L / patch_len, patch_len * C) (segment-wise
    recurrence for a recurrent model, as in SegRNN, Lin et al. 2023: fewer, richer steps for long
    look-back windows).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        revin: bool = False,
        channel_independent: bool = False,
        patch_len: int = 1,
    ) -> None:
        super().__init__()
        self.core_input_shape, self.core_output_shape = self.core_shapes(
            input_shape, output_shape, channel_independent, patch_len
        )
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.channel_independent = channel_independent
        self.model = model
        self.revin = RevIN(input_shape[1]) if revin else None

    @staticmethod
    def core_shapes(
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        channel_independent: bool = False,
        patch_len: int = 1,
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The per-sample input and output shapes of the model inside, or :class:`ShapeError` for
        shapes that are not (L, C) windows and (H, C_out) forecasts."""
        if len(input_shape) != 2 or len(output_shape) != 2:
            raise ShapeError(
                "window options need (L, C) windows in and (H, C) forecasts out, "
                f"not input shape {list(input_shape)} and output shape {list(output_shape)}"
            )
        if output_shape[1] > input_shape[1]:
            raise ShapeError(f"a forecast of {output_shape[1]} channels from {input_shape[1]} input channels")
        steps, channels = input_shape
        if not isinstance(patch_len, int) or patch_len < 1 or steps % patch_len:
            raise ValueError(f"patch_len must be a positive divisor of the {steps} input steps, got {patch_len}")
        channels = 1 if channel_independent else channels
        core_output = (output_shape[0], 1) if channel_independent else tuple(output_shape)
        return (steps // patch_len, patch_len * channels), core_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, (steps, channels) = len(x), self.input_shape
        x = x.reshape(batch, steps, channels)
        stats = None
        if self.revin is not None:
            x, stats = self.revin.normalise(x)
        if self.channel_independent:
            series = x.transpose(1, 2).reshape(batch * channels, steps, 1)
            y = (
                self._core(series)
                .reshape(batch, channels, -1)
                .transpose(1, 2)[..., -self.output_shape[1] :]
                .contiguous()
            )
        else:
            y = self._core(x).reshape(batch, *self.output_shape)
        if stats is not None:
            y = self.revin.denormalise(y, stats)  # type: ignore[union-attr]
        return y.view(-1, *self.output_shape)

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        # Segments are a reshape: patch_len consecutive steps side by side, no copy.
        return self.model(x.reshape(len(x), *self.core_input_shape)).view(-1, *self.core_output_shape)
