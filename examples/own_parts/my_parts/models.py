"""A model of one's own: a plain nn.Module sized from the data's per-sample shapes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn


class GatedMLP(nn.Module):
    """An MLP whose hidden layers are gated: ``h = act(W x) * sigmoid(V x)``.

    Like every model the framework builds, it takes ``input_shape`` and ``output_shape`` (filled in
    from the data module's spec) and maps ``(N, *input_shape)`` to ``(N, *output_shape)``. Its own
    options, ``hidden`` and ``activation``, are the config's ``model.*`` keys.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        hidden: Sequence[int] = (16,),
        activation: Literal["tanh", "relu", "gelu"] = "tanh",
    ) -> None:
        super().__init__()
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must list positive layer sizes, got {list(hidden)}")
        self.output_shape = tuple(output_shape)
        self.act = {"tanh": nn.Tanh(), "relu": nn.ReLU(), "gelu": nn.GELU()}[activation]
        sizes = [math.prod(input_shape), *hidden]
        self.values = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.gates = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Linear(sizes[-1], math.prod(output_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for value, gate in zip(self.values, self.gates):
            h = self.act(value(h)) * torch.sigmoid(gate(h))
        return self.out(h).view(len(x), *self.output_shape)
