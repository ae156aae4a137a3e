from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from experiments.models.common import as_shape, numel, sequence_shape


class LSTM(nn.Module):
    """An LSTM encoder over the steps of a sequence, and a linear head on its last hidden state.

    The head emits the whole output at once (``numel(output_shape)`` values): ten class logits for
    an image read row by row, or every step of a forecast horizon. Segments of several steps, RevIN
    and channel independence for forecasting windows come from the ``window`` config
    (:class:`~experiments.models.window.Windowed`), around this model or any other.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape, "input_shape")
        self.output_shape = as_shape(output_shape, "output_shape")
        self.steps, features = sequence_shape(self.input_shape)
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
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), numel(self.output_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.reshape(len(x), self.steps, -1)
        encoded, _ = self.lstm(sequence)
        return self.head(self.dropout(encoded[:, -1])).view(-1, *self.output_shape)
