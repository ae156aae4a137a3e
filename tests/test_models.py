"""The plain models: shapes, initialisation, and clear errors for shapes they cannot take."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.config import CONFIG_DIR
from experiments.models import CNN, LSTM, MLP, Linear


# Every model that is registered (conf/model/<name>.yaml), not a list kept by hand.
MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    ("input_shape", "output_shape"), [((1, 28, 28), (10,)), ((24, 3), (6, 3)), ((16, 1), (1,))]
)
def test_models_map_input_shape_to_output_shape(name: str, input_shape, output_shape) -> None:
    model = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{name}.yaml"), input_shape, output_shape)
    out = model(torch.randn(5, *input_shape))
    assert out.shape == (5, *output_shape)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_linear_starts_at_zero_like_the_primer() -> None:
    neuron = Linear((1,), (1,), init="zeros")
    assert neuron.w.item() == 0.0 and neuron.b.item() == 0.0
    assert torch.equal(neuron(torch.tensor([[3.0]])), torch.zeros(1, 1))


def test_mlp_layers_follow_the_options() -> None:
    model = MLP((2,), (1,), hidden=[4, 3], activation="tanh", dropout=0.1, batch_norm=True)
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "Tanh", "Dropout",
                     "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CNN((2,), (1,)), "a CNN needs (C, H, W) images or (L, C) sequences"),
        (lambda: LSTM((3, 28, 28), (10,)), "a sequence model reads (steps, features) sequences"),
        (lambda: MLP((2,), (1,), activation="swish"), "unknown activation 'swish'"),
        (lambda: MLP((2,), (1,), hidden=[0]), "hidden sizes must be positive"),
    ],
)
def test_impossible_models_say_why(build, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()
