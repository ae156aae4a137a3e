from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from experiments.models.common import as_shape, make_activation, numel


class MLP(nn.Module):
    """A multi-layer perceptron: flatten, then ``Linear -> [BatchNorm] -> act -> [Dropout]`` per hidden size.

    ``hidden=[]`` gives logistic/linear regression. The output layer has no activation: the task
    applies the matching loss to the raw outputs (logits for classification).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        hidden: Sequence[int] = (128,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape, "input_shape")
        self.output_shape = as_shape(output_shape, "output_shape")
        if any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = numel(self.input_shape)
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, numel(self.output_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1, *self.output_shape)
