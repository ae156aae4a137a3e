"""Exact resume: a run SIGKILLed three times and resumed with resume=latest ends bit-identical to
one that was never interrupted; a NaN loss stops a run cleanly and keeps the last good checkpoint."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch

from reliability_helpers import completed_results, run

# 256 samples in batches of 32: 8 steps an epoch, 48 in all, last.ckpt every 5 steps and at each
# epoch end. Dropout makes the random state matter; shuffling makes the loader position matter.
BLOBS = [
    "experiment=xor",
    "name=blobs",
    "data._target_=reliability_helpers.BlobsDataModule",
    "data.batch_size=32",
    "model.hidden=[16]",
    "model.dropout=0.2",
    "trainer.max_epochs=6",
    "checkpoint_every_n_steps=5",
    # Chunks of 3 steps (3, 3, 2 per epoch): step checkpoints land inside chunks, and the kill
    # after step 13 lands at the chunk's end (step 14).
    "trainer.steps_per_execution=3",
]
KILL = "+callbacks.kill._target_=reliability_helpers.KillAt"
# Where the three runs die (SIGKILL from within, at a fixed point, so the test is repeatable):
# mid-epoch after step 13 (last.ckpt from step 10, so the resume starts inside epoch 2), during
# the validation of epoch 4 (last.ckpt from step 30, inside epoch 4), and as epoch 6 starts
# (last.ckpt from the end of epoch 5).
KILLS = [
    [KILL, "+callbacks.kill.hook=train_batch_end", "+callbacks.kill.step=13"],
    [KILL, "+callbacks.kill.hook=validation_batch_end", "+callbacks.kill.epoch=3"],
    [KILL, "+callbacks.kill.hook=train_epoch_start", "+callbacks.kill.epoch=5"],
]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.slow  # five real runs, about 35 s of CPU time
def test_killed_three_times_and_resumed_ends_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert run("train", *BLOBS, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0

    steps_at_kill = []
    for number, kill in enumerate(KILLS):
        # Each segment dies elsewhere: its kill callback's overrides change, deliberately.
        resume = ["resume=latest", "resume_with_changes=true"] if number else []
        result = run("train", *BLOBS, *kill, *resume, cwd=tmp_path)
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        runs = list((tmp_path / "outputs" / "blobs" / "runs").iterdir())
        assert len(runs) == 1  # every resume continued in the same directory
        steps_at_kill.append(torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])
    assert steps_at_kill == [10, 30, 40]
    result = run("train", *BLOBS, "resume=latest", "resume_with_changes=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (resumed,) = (tmp_path / "outputs" / "blobs" / "runs").iterdir()

    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == expected["global_step"] == 48
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, got["state_dict"][name]), name
    for a, b in zip(expected["optimizer_states"][0]["state"].values(), got["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # Same best checkpoint, same test metrics, the same history row for row (the train means of
    # the epochs resumed in their middle included: the task keeps its running sums in checkpoints).
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (reference, resumed)]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["best"] == metrics[1]["best"]
    assert _history(resumed) == _history(reference)
    assert len(_history(resumed)) == 6
    # One TensorBoard run, whose validation curve has each step once, as the reference has.
    assert _scalars(resumed, "val/loss") == _scalars(reference, "val/loss")


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    # One neuron in float32 with a learning rate 10^4 times too large: the loss overflows at step 6.
    run_dir = tmp_path / "run"
    result = run(
        "train",
        "experiment=neuron",
        "trainer.precision=32-true",
        "optimizer.lr=1000",
        "trainer.max_epochs=30",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: loss became inf at step 6 (epoch 6)")
    assert "Traceback" not in result.stderr
    assert f"last good checkpoint is {run_dir / 'checkpoints' / 'last.ckpt'}" in error
    # last.ckpt is written at most every 5 s: the last one written before the failure, all finite.
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= last["global_step"] <= 5
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    assert completed_results(tmp_path) == []
    # Written at every epoch, it is the state just before the step that failed.
    every_epoch = tmp_path / "every_epoch"
    result = run(
        "train",
        "experiment=neuron",
        "trainer.precision=32-true",
        "optimizer.lr=1000",
        "trainer.max_epochs=30",
        "callbacks.last_checkpoint.min_write_interval=0",
        f"hydra.run.dir={every_epoch}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    last = torch.load(every_epoch / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5 and all(torch.isfinite(t).all() for t in last["state_dict"].values())
