"""Every shipped config composes, and its models fit its data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.config import CONFIG_DIR, build, check_config

from conftest import compose_config

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
        # A callback config is one callback, added to the default ones.
        choice = f"[default,{option}]" if group == "callbacks" else option
        cfg = compose_config("train", ["experiment=xor", f"{group}={choice}"], tmp_path)
        check_config(cfg)


def test_a_step_checkpoint_is_built_only_when_it_would_save(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from experiments.config import build_callbacks

    def step_intervals(overrides: list[str]) -> list[int]:
        callbacks = build_callbacks(compose_config("train", ["experiment=xor", *overrides], tmp_path))
        return sorted(c._every_n_train_steps for c in callbacks if isinstance(c, ModelCheckpoint))

    assert step_intervals([]) == [0, 0]  # best.ckpt and last.ckpt at epoch ends only
    assert step_intervals(["checkpoint_every_n_steps=7"]) == [0, 0, 7]


def test_the_trainer_takes_back_lightnings_per_step_nvml_check_while_it_fits_and_only_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    from experiments.config import build, build_trainer

    seen: list[tuple[str | None, int, bool]] = []

    class Look(Callback):
        def on_train_start(self, trainer: object, pl_module: object) -> None:
            moves_skipped = getattr(_ResultMetric.to, "skips_repeated_moves", False)
            seen.append((os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"), torch.get_num_threads(), moves_skipped))

    cfg = compose_config("train", ["experiment=xor", "trainer.max_epochs=1", "trainer.num_threads=1"], tmp_path)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    torch.set_num_threads(2)
    try:
        datamodule, task = build(cfg)
        build_trainer(cfg, logger=False, callbacks=[Look()], enable_checkpointing=False).fit(
            task, datamodule=datamodule
        )
        # Inside the fit: no NVML check, the run's threads, Lightning's result moves skipped...
        assert seen == [(None, 1, True)]
        # ... and the caller's process as it was afterwards (a plain Lightning Trainer runs unpatched).
        assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
        assert torch.get_num_threads() == 2
        assert not getattr(_ResultMetric.to, "skips_repeated_moves", False)
    finally:
        torch.set_num_threads(1)


def test_the_trainer_profiles_when_asked(tmp_path: Path) -> None:
    from lightning.pytorch.profilers import SimpleProfiler

    from experiments.config import build_trainer

    profiled = compose_config("train", ["experiment=xor", "trainer.profiler=simple"], tmp_path)
    assert isinstance(build_trainer(profiled, logger=False).profiler, SimpleProfiler)


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_steps_per_execution_must_be_auto_or_a_positive_integer(tmp_path: Path, value: str) -> None:
    from experiments.config import build_trainer
    from experiments.errors import describe

    cfg = compose_config("train", ["experiment=xor", f"trainer.steps_per_execution={value}"], tmp_path)
    with pytest.raises(Exception) as caught:
        build_trainer(cfg, logger=False)
    assert "trainer.steps_per_execution" in (describe(caught.value) or "")
