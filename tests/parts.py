"""Parts of a user's own for tests: a model whose options share no name with the shipped models'."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TinyNet(nn.Module):
    """Flatten, one hidden layer of ``width`` units with ``squash`` (tanh or none), a linear head."""

    def __init__(self, input_shape: Sequence[int], output_shape: Sequence[int], width: int = 8, squash: bool = True):
        super().__init__()
        self.output_shape = tuple(output_shape)
        inputs, outputs = int(torch.tensor(input_shape).prod()), int(torch.tensor(output_shape).prod())
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(inputs, width), nn.Tanh() if squash else nn.Identity(), nn.Linear(width, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1, *self.output_shape)
