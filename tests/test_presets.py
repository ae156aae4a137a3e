"""Presets choose variants; they never patch another group's keys. So every experiment composes with
every model (the shipped ones, and one of a user's own whose options share no name with ours), and
builds, or refuses in one line because the model cannot take the data's shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.config import build, check_config
from experiments.errors import UserError

from conftest import compose_config, group_option, registered

OWN_CONFIGS = Path(__file__).parent / "parts_conf"
MODELS = ["tiny", *registered("model")]
# The one line a model that cannot take the data's shapes gets (experiments.config.build).
SHAPE_REFUSALS = ("does not fit data", "yields no forecasting windows")


def test_no_preset_sets_a_model_key() -> None:
    for name in registered("experiment"):
        preset = OmegaConf.load(Path(__file__).parents[1] / "conf" / "experiment" / f"{name}.yaml")
        assert "model" not in preset, f"experiment/{name}.yaml patches model keys: give it a model variant"


@pytest.mark.parametrize("experiment", registered("experiment"))
def test_every_experiment_composes_with_every_model(experiment: str, tmp_path: Path) -> None:
    # Composed for real with the user's own model (from a --config-dir, as a user adds it); the
    # shipped models then take the place of the model node of that same composition, which is
    # what a command-line model=... does to a preset that sets no model key (checked above).
    overrides = [f"experiment={experiment}", "model=tiny", f"hydra.searchpath=[file://{OWN_CONFIGS}]"]
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.name == experiment and cfg.model._target_ == "parts.TinyNet"  # the preset's settings stay
    built, refused = [], []
    for model in MODELS:
        if model != "tiny":
            cfg.model = group_option("model", model)
        try:
            check_config(cfg)
            build(cfg)
        except UserError as err:
            assert any(words in str(err) for words in SHAPE_REFUSALS), f"{experiment} x {model}: {err}"
            assert "\n" not in str(err)
            refused.append(model)
        else:
            built.append(model)
    assert "tiny" in built and "mlp" in built, (built, refused)
