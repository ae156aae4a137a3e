from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from experiments.models.common import ShapeError, as_shape, make_activation, numel


class CNN(nn.Module):
    """Convolution blocks ``Conv -> [BatchNorm] -> act -> [MaxPool]``, then a head.

    ``(C, H, W)`` images get 2-D convolutions; ``(L, C)`` sequences (time-series windows) get 1-D
    convolutions over time with the C series as channels. Each entry of ``channels`` is one block;
    ``pool`` halves (for 2) the resolution after every block. ``head="global"`` averages each
    channel over the remaining positions before one linear layer; ``head="dense"`` flattens them
    into a hidden layer of ``dense_size`` units.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        pool: int = 2,
        batch_norm: bool = True,
        activation: str = "relu",
        dropout: float = 0.0,
        head: str = "dense",
        dense_size: int = 128,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape, "input_shape")
        self.output_shape = as_shape(output_shape, "output_shape")
        # 2-D layers for images, 1-D layers over time for windows: same constructor arguments.
        conv: type[nn.Conv1d | nn.Conv2d]
        norm: type[nn.BatchNorm1d | nn.BatchNorm2d]
        max_pool: type[nn.MaxPool1d | nn.MaxPool2d]
        if len(self.input_shape) == 3:
            conv, norm, max_pool, in_channels = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, self.input_shape[0]
            spatial = list(self.input_shape[1:])
            self.channels_last = False
        elif len(self.input_shape) == 2:
            conv, norm, max_pool, in_channels = nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, self.input_shape[1]
            spatial = [self.input_shape[0]]
            self.channels_last = True
        else:
            raise ShapeError(
                f"a CNN needs (C, H, W) images or (L, C) sequences, not input shape {list(self.input_shape)}"
            )
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive integers, got {list(channels)}")
        if head not in ("global", "dense"):
            raise ValueError(f"head must be 'global' or 'dense', got {head!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for width in channels:
            layers.append(conv(in_channels, width, kernel_size, padding=kernel_size // 2, bias=not batch_norm))
            if batch_norm:
                layers.append(norm(width))
            layers.append(make_activation(activation))
            if pool > 1 and all(s // pool >= 1 for s in spatial):
                layers.append(max_pool(pool))
                spatial = [s // pool for s in spatial]
            in_channels = width
        self.features = nn.Sequential(*layers)
        out = numel(self.output_shape)
        if head == "global":
            pooling = nn.AdaptiveAvgPool2d(1) if len(self.input_shape) == 3 else nn.AdaptiveAvgPool1d(1)
            self.head = nn.Sequential(pooling, nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels, out))
        else:
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(dropout),
                nn.Linear(in_channels * numel(spatial), dense_size),
                make_activation(activation),
                nn.Dropout(dropout),
                nn.Linear(dense_size, out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), *self.input_shape)
        if self.channels_last:
            x = x.transpose(1, 2)
        return self.head(self.features(x)).view(-1, *self.output_shape)
