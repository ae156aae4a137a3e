"""The Python API: run() is the CLI in-process, load_run() gives back what predict computes."""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

import experiments
from experiments import load_run, run
from experiments.errors import UserError

from conftest import StartedCli
from reliability_helpers import call_cli


def _run_folder(root: Path) -> Path:
    [folder] = (root / "outputs" / "xor" / "runs").iterdir()
    return folder


def _lines(text: str, run_dir: Path) -> list[str]:
    """Output lines with what differs between two identical runs (folder, fit seconds) blanked."""
    text = text.replace(str(run_dir), "<run>")
    return [re.sub(r"fit=[0-9.]+s", "fit=<s>", line) for line in text.splitlines() if line.strip()]


def test_run_matches_the_cli_and_load_run_matches_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    cli_root, api_root = tmp_path / "cli", tmp_path / "api"
    cli_root.mkdir()
    api_root.mkdir()
    # The command-line run in its own process while the API runs in this one (two cores, two runs).
    started = StartedCli("train", "experiment=xor", "seed=3", cwd=cli_root)
    try:
        monkeypatch.chdir(api_root)
        root_logger = logging.getLogger()
        handlers, level = list(root_logger.handlers), root_logger.level
        capfd.readouterr()
        metrics = run("experiment=xor", "seed=3")
        printed = capfd.readouterr()
    finally:
        cli = started.wait()
    assert cli.returncode == 0, cli.stderr
    cli_dir = _run_folder(cli_root)
    cli_metrics = json.loads((cli_dir / "metrics.json").read_text())

    # The same test metrics as the CLI's, and the dict is the run's metrics.json.
    assert metrics["status"] == "completed"
    assert metrics["test"] == cli_metrics["test"]
    assert metrics["test"]["test/acc"] == 1.0
    api_dir = _run_folder(api_root)
    assert metrics.run_dir == api_dir.resolve()
    assert metrics == json.loads((api_dir / "metrics.json").read_text())
    # The same run folder layout (outputs/<name>/runs/<time>_<pid> under the current folder) and files.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+", api_dir.name)
    assert sorted(p.name for p in api_dir.iterdir()) == sorted(p.name for p in cli_dir.iterdir())
    assert sorted(p.name for p in (api_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert (api_dir / ".hydra" / "overrides.yaml").read_text() == (cli_dir / ".hydra" / "overrides.yaml").read_text()
    # Nothing printed that the CLI doesn't print; and the caller's logging and Hydra are left alone.
    api_lines = _lines(printed.out + printed.err, api_dir)
    cli_lines = _lines(cli.stdout + cli.stderr, cli_dir)
    assert "xor: test/acc=1.0000 test/loss=0.0006 | epochs=300 fit=<s> | <run>" in api_lines
    assert [line for line in api_lines if line not in cli_lines] == []
    assert (list(root_logger.handlers), root_logger.level) == (handlers, level)
    assert not GlobalHydra.instance().is_initialized()

    # load_run: config, model in eval mode, history; predictions equal predict's, bit for bit.
    # (predict as its console script runs it, in this process: run_cli around the Hydra main)
    code, _, err = call_cli("predict", f"ckpt_path={api_dir}/checkpoints/best.ckpt")
    assert code == 0, err
    with (api_dir / "predictions.csv").open() as handle:
        table = list(csv.DictReader(handle))
    loaded = load_run(api_dir)
    assert loaded.config.name == "xor" and loaded.config.seed == 3
    assert isinstance(loaded.model, torch.nn.Module) and not loaded.model.training
    assert loaded.checkpoint.name == "best.ckpt"
    assert len(loaded.history) == 300 and loaded.history[-1]["epoch"] == 300
    assert loaded.column("val/loss")[-1] == pytest.approx(loaded.history[-1]["val/loss"])
    assert loaded.metrics == metrics
    outputs = loaded.predict()
    assert outputs["prediction"].tolist() == [int(r["prediction"]) for r in table] == [0, 1, 1, 0]
    assert outputs["probability"].tolist() == [float(r["probability"]) for r in table]
    # The same model from its checkpoint file, and the last checkpoint on request.
    assert (
        load_run(api_dir / "checkpoints" / "best.ckpt").predict()["probability"].tolist()
        == outputs["probability"].tolist()
    )
    assert load_run(api_dir, which="last").checkpoint.name == "last.ckpt"
    x = torch.tensor([[1.0, 0.0]])
    assert loaded.predict(x)["prediction"].tolist() == [1]
    assert torch.equal(loaded.model(x), loaded.task(x))


def test_run_mistakes_are_the_clis_one_line_and_leave_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^unknown experiment 'xr' \(did you mean 'xor'\?\); choose one of: "):
        run("experiment=xr")
    with pytest.raises(UserError, match=r"^unknown key 'trainer.max_epoch' \(did you mean 'trainer.max_epochs'\?\)"):
        run("experiment=xor", "trainer.max_epoch=3")
    with pytest.raises(UserError, match=r"^optimizer.lr=-1 is not valid: Invalid learning rate: -1; fix optimizer.lr"):
        run("experiment=xor", "optimizer.lr=-1")
    with pytest.raises(UserError, match=r"^run\(\) trains in this process; trainer.strategy=ddp starts"):
        run("experiment=xor", "trainer=ddp_cpu")
    with pytest.raises(UserError, match="config_dir .* is not a folder"):
        run("experiment=xor", config_dir=tmp_path / "nothing")
    with pytest.raises(UserError, match="pass 'best' or 'last'"):
        load_run(tmp_path, which="first")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="has no checkpoints/best.ckpt"):
        load_run(tmp_path)
    printed = capfd.readouterr()
    assert "Error executing job" not in printed.err and "Traceback" not in printed.err
    assert not (tmp_path / "outputs" / "xor" / "runs").exists() or not any(
        (tmp_path / "outputs" / "xor" / "runs").iterdir()
    )


def test_run_leaves_the_process_as_it_found_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run seeds every generator, turns deterministic algorithms on, sets torch's threads and
    # adds Lightning's environment variables: none of it outlives run(), also when it fails.
    import os
    import random

    import numpy as np

    monkeypatch.chdir(tmp_path)

    def state() -> tuple:
        return (
            dict(os.environ),
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
            torch.get_default_dtype(),
        )

    # The second fails after the run has seeded the generators (a setting refused when built).
    for overrides in (["trainer.max_epochs=2"], ["trainer.max_epochs=2", "optimizer.lr=-1"]):
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        expected = (random.random(), np.random.rand(), torch.rand(1).item())
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        before = state()
        try:
            run("experiment=xor", "logger=none", "seed=7", *overrides)
        except UserError:
            assert overrides[-1] == "optimizer.lr=-1"
        assert state() == before
        assert "PL_GLOBAL_SEED" not in os.environ or "PL_GLOBAL_SEED" in before[0]
        # The caller's next draws are the ones it would have made without the run.
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_two_runs_of_one_process_get_two_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Started late in a second, a short run's folder is named for the next second: before, the run
    # after it could get that folder too ("holds another run", or the first run's results returned).
    while time.time() % 1 < 0.85:
        time.sleep(0.01)
    first = run("experiment=xor", "trainer.max_epochs=1", "logger=none", "seed=1")
    second = run("experiment=xor", "trainer.max_epochs=1", "logger=none", "seed=2")
    assert first.run_dir != second.run_dir and first.run_dir.parent == second.run_dir.parent
    assert second["test"] != first["test"] or second.run_dir.name > first.run_dir.name


def test_the_api_is_exported_lazily() -> None:
    assert experiments.run is run and experiments.load_run is load_run
    with pytest.raises(AttributeError):
        experiments.nothing  # noqa: B018
