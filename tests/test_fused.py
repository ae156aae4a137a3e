"""Fused steps (``trainer.steps_per_execution``): the same maths as one step per Lightning step.

Every comparison is exact: weights, optimizer state, step counts, ``history.csv`` and the test
metrics of K > 1 must equal those of K = 1 bit for bit on a deterministic CPU run.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from experiments.train import train

# 256 samples in batches of 32: 8 steps an epoch; K = 3 leaves a short last chunk every epoch.
# Dropout makes the random state matter, shuffling the loader order.
BLOBS = [
    "experiment=xor",
    "name=blobs",
    "data._target_=reliability_helpers.BlobsDataModule",
    "data.batch_size=32",
    "model.hidden=[16]",
    "model.dropout=0.2",
    "trainer.max_epochs=4",
    "callbacks.history.verbose=false",
]


def _train(compose: Callable[..., DictConfig], run_dir: Path, *overrides: str) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))  # reliability_helpers, as the CLI tests import it
    cfg = compose(*BLOBS, *overrides)
    cfg.paths.output_dir = str(run_dir)  # the callbacks' folders interpolate it
    return train(cfg)


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _assert_same_run(a: Path, b: Path) -> None:
    first = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    second = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == second["global_step"]
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
    for x, y in zip(first["optimizer_states"][0]["state"].values(), second["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert first.get("lr_schedulers") == second.get("lr_schedulers")
    assert _history(a) == _history(b)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (a, b)]
    assert metrics[0]["test"] == metrics[1]["test"]
    assert metrics[0]["val"] == metrics[1]["val"]
    assert metrics[0]["best"] == metrics[1]["best"]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        # Per-step cosine schedule and gradient clipping: both are stepped inside the chunk.
        ["scheduler=cosine", "scheduler.T_max=32", "+task.scheduler_interval=step", "trainer.gradient_clip_val=0.05"],
        ["checkpoint_every_n_steps=5", "+trainer.limit_train_batches=7"],
    ],
    ids=["plain", "step-scheduler-and-clipping", "step-checkpoints-and-limit"],
)
def test_fused_steps_train_bit_identical_to_one_step_per_lightning_step(
    compose_train: Callable[..., DictConfig], tmp_path: Path, extra: list[str]
) -> None:
    single = _train(compose_train, tmp_path / "k1", "trainer.steps_per_execution=1", *extra)
    fused = _train(compose_train, tmp_path / "k3", "trainer.steps_per_execution=3", *extra)
    assert single["status"] == fused["status"] == "completed"
    _assert_same_run(tmp_path / "k1", tmp_path / "k3")
    steps = 7 if "+trainer.limit_train_batches=7" in extra else 8
    last = torch.load(tmp_path / "k3" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 * steps  # global_step counts optimizer steps, not chunks


def test_step_checkpoint_lands_on_the_exact_step_inside_a_chunk(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # Steps 5 and 10 fall inside chunks of 4 (batches 4..7 of epoch 1, 0..3 of epoch 2).
    _train(
        compose_train,
        tmp_path / "run",
        "trainer.steps_per_execution=4",
        "checkpoint_every_n_steps=5",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_epochs=0",
        "callbacks.last_checkpoint.save_on_train_epoch_end=false",
    )
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 15


def test_max_steps_stops_inside_a_chunk(compose_train: Callable[..., DictConfig], tmp_path: Path) -> None:
    _train(compose_train, tmp_path / "run", "trainer.steps_per_execution=3", "+trainer.max_steps=10")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 10


def test_a_task_that_steps_its_own_way_trains_unfused_and_says_so(
    compose_train: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from reliability_helpers import OwnStepTask

    OwnStepTask.steps_taken = 0
    with caplog.at_level("WARNING", logger="experiments.engine"):
        metrics = _train(
            compose_train, tmp_path / "run", "+task._target_=reliability_helpers.OwnStepTask", "trainer.max_epochs=2"
        )
    assert metrics["status"] == "completed"
    assert OwnStepTask.steps_taken == 16  # every step through its own optimizer_step
    lines = [r.getMessage() for r in caplog.records if r.name == "experiments.engine"]
    assert lines == ["steps_per_execution: OwnStepTask overrides optimizer_step; one optimizer step per Lightning step"]


def test_epoch_sums_add_up_as_lightnings_one_at_a_time_sums_bit_for_bit() -> None:
    # The engine keeps a step's logged value and sums an epoch's values at its end (or when a
    # checkpoint needs them); the result must be Lightning's running ``total + value * size``,
    # in the same floating-point type, wherever a checkpoint cuts the epoch.
    import random

    from experiments.engine import _add_up

    random.seed(0)
    for _ in range(100):
        dtype = random.choice([torch.float32, torch.float64])
        values = [torch.randn((), dtype=dtype) * 10 ** random.uniform(-6, 6) for _ in range(random.randint(1, 500))]
        sizes = [random.choice([32, 17, 1, 1000]) for _ in values]
        total, count = torch.tensor(0.0), torch.tensor(0)
        for value, size in zip(values, sizes):
            total, count = total + value * size, count + size
        cut = random.randint(0, len(values))
        first = _add_up([torch.tensor(0.0), 0, values[:cut], sizes[:cut]])
        summed, counted = _add_up([*first, values[cut:], sizes[cut:]])
        assert summed.dtype == total.dtype and summed.item() == total.item() and counted == int(count)
        assert (summed / torch.tensor(counted)).item() == (total / count).item()
