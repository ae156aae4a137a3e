"""XOR: the default recipe solves it for every seed; evaluate and predict reproduce a finished run."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import StartedCli, run_cli, selected
from reliability_helpers import call_cli


@pytest.fixture(scope="module")
def seeds(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, StartedCli]]:
    """The ten-seed multirun of test_default_xor_recipe_solves_the_truth_table_for_every_seed, started
    before the module's single run so that the two share the machine's cores; waited for by that test."""
    if not selected(request, "test_default_xor_recipe_solves_the_truth_table_for_every_seed"):
        yield None  # type: ignore[misc]  # (only xor_cli asked for it: nothing to start)
        return
    workdir = tmp_path_factory.mktemp("seeds")
    # As users check it: one multirun over ten seeds (its jobs in parallel workers, one per core).
    started = StartedCli(
        "train",
        "-m",
        "experiment=xor",
        "seed=range(10)",
        "logger=none",
        "callbacks.history.verbose=false",
        f"hydra.sweep.dir={workdir / 'seeds'}",
        cwd=workdir,
    )
    yield workdir / "seeds", started
    started.wait()  # (at once when its test ran; otherwise not left behind)


@pytest.fixture(scope="module")
def xor_cli(
    tmp_path_factory: pytest.TempPathFactory, seeds: tuple[Path, StartedCli]
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One finished `experiment=xor` run, made through the command line, and what it printed."""
    workdir = tmp_path_factory.mktemp("xor")
    result = run_cli("train", "experiment=xor", f"hydra.run.dir={workdir / 'run'}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "run", result


@pytest.fixture(scope="module")
def xor_run(xor_cli: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    return xor_cli[0]


def test_run_prints_its_epochs_and_result_without_library_chatter(xor_cli) -> None:
    run_dir, result = xor_cli
    printed = result.stdout + result.stderr
    assert "epoch train/acc train/loss val/acc val/loss" in result.stdout
    assert any(line.startswith("xor: test/acc=1.0000") and str(run_dir) in line for line in result.stdout.splitlines())
    # Lightning's deprecation warning about torch's pytree API and its cloud-logger advert
    assert "LeafSpec" not in printed and "litlogger" not in printed


def test_run_directory_holds_every_promised_file(xor_run: Path) -> None:
    for name in ("config.yaml", "metrics.json", "history.csv", "learning_curves.png"):
        assert (xor_run / name).is_file(), name
    assert (xor_run / "checkpoints" / "best.ckpt").is_file()
    assert (xor_run / "checkpoints" / "last.ckpt").is_file()
    assert list((xor_run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((xor_run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["epochs"] == 300
    assert metrics["fit_seconds"] > 0
    assert metrics["test"]["test/acc"] == 1.0
    assert set(metrics["val"]) == {"val/loss", "val/acc"}
    # The automatic choices, as numbers: one torch thread and 128 steps per Lightning step (the cap)
    # for a model this small.
    from omegaconf import OmegaConf

    trainer = OmegaConf.load(xor_run / "config.yaml").trainer
    assert (trainer.num_threads, trainer.steps_per_execution) == (1, 128)
    with open(xor_run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 300
    assert {"epoch", "train/loss", "train/acc", "val/loss", "val/acc"} <= set(rows[0])
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"]) / 10


def test_evaluate_reproduces_the_test_metrics_exactly(xor_run: Path) -> None:
    recorded = json.loads((xor_run / "metrics.json").read_text())["test"]
    # In this process, exactly as the console script runs it (run_cli around the Hydra main):
    # the command line itself, and its output free of library chatter, is checked above.
    code, out, err = call_cli("evaluate", f"ckpt_path={xor_run / 'checkpoints' / 'best.ckpt'}")
    assert code == 0, err
    printed = dict(token.split("=") for token in out.splitlines()[-1].split(" | ")[0].split())
    assert printed == {k: f"{v:.4f}" for k, v in recorded.items()}
    # and to the last bit, through the Python API the CLI calls
    from omegaconf import OmegaConf

    from experiments.evaluate import evaluate

    assert evaluate(OmegaConf.create({"ckpt_path": str(xor_run / "checkpoints" / "best.ckpt")})) == recorded


def test_predict_prints_and_saves_the_truth_table(xor_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "predictions.csv"
    ckpt = xor_run / "checkpoints" / "best.ckpt"
    code, out, err = call_cli("predict", f"ckpt_path={ckpt}", f"output={output}")  # as the console script runs it
    assert code == 0, err
    assert "predicted classes [0, 1, 1, 0]" in out
    with open(output) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["prediction"]) for r in rows] == [0, 1, 1, 0]
    assert [(float(r["input_0"]), float(r["input_1"])) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all((float(r["probability"]) >= 0.5) == (r["prediction"] == "1") for r in rows)

    inputs = tmp_path / "inputs.csv"
    inputs.write_text("a,b\n1,1\n0,1\n")
    code, _, err = call_cli("predict", f"ckpt_path={ckpt}", f"inputs={inputs}", f"output={output}")
    assert code == 0, err
    with open(output) as handle:
        assert [int(r["prediction"]) for r in csv.DictReader(handle)] == [0, 1]


def test_default_xor_recipe_solves_the_truth_table_for_every_seed(seeds: tuple[Path, StartedCli]) -> None:
    sweep, started = seeds
    result = started.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(r["overrides"].split("seed=")[1].split()[0]) for r in rows) == list(range(10))
    for row in rows:
        assert row["status"] == "completed" and float(row["test/acc"]) == 1.0, row
        assert float(row["test/loss"]) < 0.01, row
