from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from experiments.models.common import as_shape, numel


class Linear(nn.Module):
    """The single neuron of the classic ``y = w * x + b`` example, generalised to any shapes.

    Parameters are named ``w`` and ``b`` as in the primer; a single neuron reports them
    (``reported_parameters``), so every run of it records them after each epoch.
    ``init="zeros"`` starts from ``w = b = 0`` like the primer's numpy code; ``"default"``
    uses PyTorch's ``nn.Linear`` initialisation.
    """

    def __init__(self, input_shape: Sequence[int], output_shape: Sequence[int], init: str = "default") -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape, "input_shape")
        self.output_shape = as_shape(output_shape, "output_shape")
        reference = nn.Linear(numel(self.input_shape), numel(self.output_shape))
        if init == "zeros":
            nn.init.zeros_(reference.weight)
            nn.init.zeros_(reference.bias)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}; choose one of: default, zeros")
        self.w = nn.Parameter(reference.weight.detach().clone())
        self.b = nn.Parameter(reference.bias.detach().clone())
        # A single neuron's w and b are numbers worth a column each in history.csv (History).
        self.reported_parameters: tuple[str, ...] = ("w", "b") if self.w.numel() == 1 else ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.flatten(1), self.w, self.b)
        return y.view(-1, *self.output_shape)
