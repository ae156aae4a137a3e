"""DDP on the CPU: 2 processes (gloo) match 1 process with the same global batch, only rank 0
writes files, and a multirun of DDP jobs gives each job one directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from experiments.data import InMemoryLoader

from reliability_helpers import call_cli, run

# No dropout: then 2 ranks x 16 samples and 1 process x 32 samples take the same steps, and only
# the order of floating-point sums differs.
BLOBS = [
    "experiment=xor",
    "name=blobs",
    "data._target_=reliability_helpers.BlobsDataModule",
    "model.hidden=[16]",
    "trainer.max_epochs=3",
]
# Stated tolerance: relative 1e-4 on every logged loss, identical accuracies.
RTOL = 1e-4


def _rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _files(run_dir: Path) -> set[str]:
    """The run's files, event files and checkpoints by kind rather than by name."""
    names = set()
    for path in run_dir.rglob("*"):
        if path.is_file():
            name = str(path.relative_to(run_dir))
            names.add("tensorboard/events" if "tfevents" in name else name)
    return names


def test_each_rank_takes_a_disjoint_shard_of_the_same_batches() -> None:
    data = torch.arange(64)
    single = list(InMemoryLoader(data, batch_size=32, shuffle=True, seed=3))
    ranks = [list(InMemoryLoader(data, batch_size=16, shuffle=True, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    for step, (whole,) in enumerate(single):
        part0, part1 = ranks[0][step][0], ranks[1][step][0]
        assert not set(part0.tolist()) & set(part1.tolist())
        assert sorted(part0.tolist() + part1.tolist()) == sorted(whole.tolist())


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    # The one-process run in this process, as the console script runs it (run_cli around the Hydra
    # main), from the same working folder; the two-process run is the command line's.
    monkeypatch.chdir(tmp_path)
    code, _, err = call_cli("train", *BLOBS, "data.batch_size=32", f"hydra.run.dir={one}")
    assert code == 0, err[-2000:]
    second = run("train", *BLOBS, "trainer=ddp_cpu", "data.batch_size=16", f"hydra.run.dir={two}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "MEMBER: 2/2" in second.stdout + second.stderr

    for a, b in zip(_rows(one), _rows(two), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith("/acc") or key == "epoch":
                assert a[key] == b[key], key
            else:
                assert b[key] == pytest.approx(a[key], rel=RTOL), key
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    assert metrics[1]["status"] == "completed"
    assert metrics[1]["test"]["test/acc"] == metrics[0]["test"]["test/acc"]
    assert metrics[1]["test"]["test/loss"] == pytest.approx(metrics[0]["test"]["test/loss"], rel=RTOL)
    # Rank 1 writes nothing: the same files as a single process, and nothing beside the runs.
    assert _files(two) == _files(one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


@pytest.mark.slow
def test_multirun_with_ddp_gives_each_job_one_directory(tmp_path: Path) -> None:
    result = run(
        "train", "-m", *BLOBS, "trainer.max_epochs=1", "trainer=ddp_cpu", "data.batch_size=16", "seed=0,1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (result.stdout + result.stderr).count("MEMBER: 2/2") == 2  # each job ran two ranks
    # Every rank ended cleanly: one that aborts at exit gets Lightning to kill the sweep mid-job.
    assert "terminate called" not in result.stderr and "terminated with code" not in result.stderr
    (sweep,) = (tmp_path / "outputs" / "blobs" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == [
        ".lock",  # the sweep folder's lock (one sweep at a time writes into it)
        "0",
        "1",
        "best.yaml",
        "multirun.yaml",
        "objective.png",
        "summary.csv",
        "summary.md",
    ]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
        assert f"seed: {job}" in (sweep / job / "config.yaml").read_text()
    assert _files(sweep / "0") == _files(sweep / "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    assert list((tmp_path / "outputs").iterdir()) == [tmp_path / "outputs" / "blobs"]
    assert [p.name for p in (tmp_path / "outputs" / "blobs").iterdir()] == ["multiruns"]


@pytest.mark.parametrize(
    ("n", "world_size", "batch_size"), [(4, 3, 4), (10, 4, 3), (2785, 8, 256), (7, 7, 1), (5, 2, 1000)]
)
def test_evaluation_shards_hold_every_sample_exactly_once(n: int, world_size: int, batch_size: int) -> None:
    data = torch.arange(n)
    seen = [
        int(i)
        for rank in range(world_size)
        for (batch,) in InMemoryLoader(data, batch_size=batch_size, rank=rank, world_size=world_size, every_sample=True)
        for i in batch
    ]
    assert sorted(seen) == list(range(n))
    # Training shards stay equal: the same number of steps on every rank.
    lengths = {
        len(InMemoryLoader(data, batch_size=batch_size, shuffle=True, rank=r, world_size=world_size))
        for r in range(world_size)
    }
    assert len(lengths) == 1


def test_an_evaluation_split_smaller_than_the_processes_is_refused() -> None:
    from experiments.errors import UserError

    with pytest.raises(UserError, match="3 samples cannot be shared by 4 processes"):
        InMemoryLoader(torch.arange(3), batch_size=1, rank=0, world_size=4, every_sample=True)


@pytest.mark.slow
def test_three_process_test_metrics_equal_evaluate(tmp_path: Path) -> None:
    """XOR's 4 samples on 3 ranks: each is scored once (2 + 1 + 1), and the mean is over all 4."""
    run_dir = tmp_path / "run"
    trained = run(
        "train",
        "experiment=xor",
        "trainer=ddp_cpu",
        "trainer.devices=3",
        "trainer.max_epochs=30",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "MEMBER: 3/3" in trained.stdout + trained.stderr
    tested = json.loads((run_dir / "metrics.json").read_text())["test"]
    from omegaconf import OmegaConf

    from experiments.evaluate import evaluate

    single = evaluate(OmegaConf.create({"ckpt_path": str(run_dir / "checkpoints" / "best.ckpt")}))  # one process
    assert tested["test/acc"] == single["test/acc"]
    assert tested["test/loss"] == pytest.approx(single["test/loss"], rel=1e-6)
    assert tested["test/acc"] * 4 == pytest.approx(round(tested["test/acc"] * 4))  # a count out of 4, not of 3
