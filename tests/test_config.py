"""Every shipped config composes, and its models fit its data."""

from __future__ import annotations

import os
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


def test_a_step_checkpoint_is_built_only_when_it_would_save(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from experiments.config import build_callbacks

    def step_intervals(overrides: list[str]) -> list[int]:
        callbacks = build_callbacks(compose_config("train", ["experiment=xor", *overrides], tmp_path))
        return sorted(c._every_n_train_steps for c in callbacks if isinstance(c, ModelCheckpoint))

    assert step_intervals([]) == [0, 0]  # best.ckpt and last.ckpt at epoch ends only
    assert step_intervals(["checkpoint_every_n_steps=7"]) == [0, 0, 7]


def test_the_trainer_takes_back_lightnings_per_step_nvml_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.config import build_trainer

    cfg = compose_config("train", ["experiment=xor"], tmp_path)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    build_trainer(cfg, logger=False)
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" not in os.environ
    # A launcher that forks needs it: CUDA must not be initialised before the fork.
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    build_trainer(cfg, logger=False, strategy="ddp_fork", devices=2)
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"


def test_the_trainer_profiles_nothing_unless_asked_and_profiles_when_asked(tmp_path: Path) -> None:
    from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

    from experiments.config import build_trainer

    quiet = build_trainer(compose_config("train", ["experiment=xor"], tmp_path), logger=False).profiler
    assert isinstance(quiet, PassThroughProfiler)
    for _ in range(2):  # one shared context, entered once per hook call
        with quiet.profile("[LightningModule]Task.training_step") as entered:
            assert entered is None
    profiled = compose_config("train", ["experiment=xor", "trainer.profiler=simple"], tmp_path)
    assert isinstance(build_trainer(profiled, logger=False).profiler, SimpleProfiler)


def test_the_checkpoint_callbacks_keep_lightnings_state_keys(tmp_path: Path) -> None:
    # Checkpoints store each callback's state under its key: ours must read Lightning's and back.
    from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

    from experiments.callbacks import ModelCheckpoint

    settings = {"dirpath": str(tmp_path), "monitor": "val/acc", "mode": "max", "every_n_train_steps": 7}
    ours, theirs = ModelCheckpoint(**settings), LightningModelCheckpoint(**settings)
    assert ours.state_key == theirs.state_key == ours.state_key
    assert ModelCheckpoint(dirpath=str(tmp_path), monitor=None).state_key != ours.state_key
