"""The plain models: shapes, initialisation, and clear errors for shapes they cannot take."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from experiments.config import build
from experiments.errors import UserError
from experiments.models import CNN, LSTM, MLP, Linear

from conftest import compose_config, group_option, registered

# Every model and data set that is registered (conf/model/<name>.yaml, conf/data/<name>.yaml).
MODELS = registered("model")
DATA = registered("data")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("input_shape", "output_shape"), [((1, 28, 28), (10,)), ((24, 3), (6, 3)), ((16, 1), (1,))])
def test_models_map_input_shape_to_output_shape(name: str, input_shape, output_shape) -> None:
    model = instantiate(group_option("model", name), input_shape, output_shape)
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
    assert kinds == [
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "Tanh",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "Tanh",
        "Dropout",
        "Linear",
    ]


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


@pytest.mark.parametrize("data", DATA)
def test_every_registered_model_fits_every_registered_data_set_or_says_why(data: str, tmp_path: Path) -> None:
    """Each model sized from each data set's spec maps a batch to the spec's output shape, or the
    build refuses the pair in one line; MLP takes any data (the refusals point users to it)."""
    cfg = compose_config("train", [f"data={data}"], tmp_path)  # one composition per data set: seconds saved
    fits = []
    for model in MODELS:
        cfg.model = group_option("model", model)
        try:
            datamodule, task = build(cfg)
        except UserError as err:
            assert f"does not fit data {cfg.data._target_.rsplit('.', 1)[-1]}" in str(err) and "\n" not in str(err)
            continue
        spec = datamodule.spec
        with torch.no_grad():
            out = task.model(torch.randn(2, *spec.input_shape, dtype=next(task.parameters()).dtype))
        assert out.shape == (2, *spec.output_shape), (model, data)
        fits.append(model)
    assert "mlp" in fits
