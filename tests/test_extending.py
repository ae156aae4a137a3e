"""The core is easy to extend: plain defaults with opt-in presets, one file per callback config,
models composed with window wrappers, any DataModule with a spec, registered task kinds."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, compose_config, run_cli

from experiments.config import build, check_config


def test_the_plain_defaults_are_the_primer_recipe_and_any_group_swaps_alone(tmp_path: Path) -> None:
    plain = compose_config("train", [], tmp_path)
    assert plain.name == "mnist_mlp" and (plain.monitor, plain.monitor_mode) == ("val/acc", "max")
    # No experiment to take away: a data set or model chosen alone is what runs.
    swapped = compose_config("train", ["data=sine", "model=lstm"], tmp_path)
    assert swapped.name == "sine_lstm" and swapped.data._target_.endswith("SineDataModule")
    assert (swapped.monitor, swapped.monitor_mode) == ("val/loss", "min")  # sine reports no accuracy
    check_config(swapped)
    datamodule, task = build(swapped)
    assert type(task.model).__name__ == "LSTM" and task.model.output_shape == datamodule.spec.output_shape


def test_data_sine_model_lstm_trains_end_to_end_from_the_command_line(tmp_path: Path) -> None:
    done = run_cli(
        "train", "data=sine", "model=lstm", "data.num_rows=400", "data.input_length=24", "data.horizon=8",
        "model.hidden_size=8", "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp_path}/run", cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["experiment"] == "sine_lstm"
    assert metrics["monitor"] == "val/loss" and "test/mse" in metrics["test"]
