"""Plain ``torch.nn.Module`` models: no Lightning, no Hydra.

Every model takes ``input_shape`` and ``output_shape`` (per sample, without the batch
dimension) and maps a batch ``(N, *input_shape)`` to ``(N, *output_shape)``, so any model
plugs into any data module whose shapes it can handle. RevIN, channel independence and segments
wrap any of them (:class:`Windowed`, the ``window`` config), so a new model is one file and one
``conf/model/<name>.yaml``.
"""

from experiments.models.cnn import CNN
from experiments.models.linear import Linear
from experiments.models.lstm import LSTM
from experiments.models.mlp import MLP
from experiments.models.window import RevIN, Windowed

__all__ = ["CNN", "LSTM", "MLP", "Linear", "RevIN", "Windowed"]
