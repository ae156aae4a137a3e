from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from experiments.models.common import ShapeError, as_shape, numel
from experiments.models.window import WindowAdapter


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(steps, features) of an input: ``(T, F)`` sequences as they are, ``(T,)`` as one feature,
    and ``(1, H, W)`` single-channel images as H rows of W pixels."""
    if len(input_shape) == 1:
        return input_shape[0], 1
    if len(input_shape) == 2:
        return input_shape[0], input_shape[1]
    if len(input_shape) == 3 and input_shape[0] == 1:
        return input_shape[1], input_shape[2]
    raise ShapeError(
        f"an LSTM reads (steps, features) sequences or (1, H, W) images, not input shape {list(input_shape)}"
    )


class LSTM(nn.Module):
    """An LSTM encoder over the steps of a sequence, and a linear head on its last hidden state.

    The head emits the whole output at once (``numel(output_shape)`` values): ten class logits for
    an image read row by row, or every step of a forecast horizon.

    For forecasting windows: ``patch_len`` > 1 feeds the LSTM segments of that many steps instead
    of single steps (segment-wise recurrence, as in SegRNN, Lin et al. 2023: fewer, richer steps
    for long look-back windows); ``revin`` and ``channel_independent`` are described in
    :class:`~experiments.models.window.WindowAdapter`.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        patch_len: int = 1,
        revin: bool = False,
        channel_independent: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape, "input_shape")
        self.output_shape = as_shape(output_shape, "output_shape")
        self.window = WindowAdapter(self.input_shape, self.output_shape, revin, channel_independent)
        self.steps, features = sequence_shape(self.window.core_input_shape)
        if patch_len < 1 or self.steps % patch_len:
            raise ValueError(f"patch_len must be a positive divisor of the {self.steps} input steps, got {patch_len}")
        self.steps //= patch_len
        features *= patch_len
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"hidden_size and num_layers must be positive, got {hidden_size}, {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.lstm = nn.LSTM(
            features,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.dropout = nn.Dropout(dropout)
        self.core_output_shape = self.window.core_output_shape
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), numel(self.core_output_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.window(x, self._core).view(-1, *self.output_shape)

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.reshape(len(x), self.steps, -1)
        encoded, _ = self.lstm(sequence)
        return self.head(self.dropout(encoded[:, -1])).view(-1, *self.core_output_shape)
