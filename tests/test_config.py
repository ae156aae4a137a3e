"""Every shipped config composes, and its models fit its data."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config

from experiments.config import CONFIG_DIR, build, check_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_builds(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    check_config(cfg)
    datamodule, task = build(cfg)
    assert cfg.name == experiment
    assert sum(p.numel() for p in task.parameters()) > 0
    assert task.model.output_shape == datamodule.spec.output_shape


@pytest.mark.parametrize("group", ["trainer", "optimizer", "scheduler", "logger", "callbacks", "debug"])
def test_every_option_of_a_group_composes(group: str, tmp_path: Path) -> None:
    for option in sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")):
        cfg = compose_config("train", ["experiment=xor", f"{group}={option}"], tmp_path)
        check_config(cfg)
