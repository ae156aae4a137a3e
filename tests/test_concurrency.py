"""Runs started at the same moment get separate directories, and the trials of concurrent sweeps
never write into each other's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reliability_helpers import start

# The time in the directory names is cut to the day, so that the runs certainly share it and only
# the process id (the ${pid:} in conf/hydra/default.yaml) can tell them apart.
SAME_TIME = "${now:%Y-%m-%d}_${pid:}"
XOR = ["experiment=xor", "trainer.max_epochs=2"]


@pytest.mark.slow  # four commands at once, six runs
def test_runs_and_sweeps_started_together_never_share_files(tmp_path: Path) -> None:
    processes = [
        start("train", *XOR, f"seed={seed}", f"hydra.run.dir=outputs/xor/runs/{SAME_TIME}", cwd=tmp_path)
        for seed in (1, 2)
    ] + [
        start("train", "-m", *XOR, f"seed={seeds}", f"hydra.sweep.dir=outputs/xor/multiruns/{SAME_TIME}", cwd=tmp_path)
        for seeds in ("3,4", "5,6")
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]

    runs = sorted((tmp_path / "outputs" / "xor" / "runs").iterdir())
    sweeps = sorted((tmp_path / "outputs" / "xor" / "multiruns").iterdir())
    assert len(runs) == 2 and len(sweeps) == 2
    jobs = runs + [sweep / job for sweep in sweeps for job in ("0", "1")]
    seeds = []
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
        config = (job / "config.yaml").read_text()
        seeds.append(int(config.split("\nseed: ")[1].split()[0]))
        assert str(job) in config  # its paths point into its own directory only
        assert len(list((job / "tensorboard").glob("events.out.tfevents.*"))) >= 1
        assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(seeds) == [1, 2, 3, 4, 5, 6]  # every run and trial wrote its own config
    for sweep in sweeps:
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
