"""One run per folder for its whole life (experiments.run_start.plan_start): a command started again in
the folder of its own run continues it from its last.ckpt (a SLURM requeue, a resubmitted job, the
same hydra.run.dir again) and counts the restart; a completed run keeps its results; another
experiment's run, or a folder that is no run, is refused in one line before anything is written."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from experiments.errors import UserError
from experiments.run_start import plan_start

from reliability_helpers import call_cli, run, start

XOR = ["experiment=xor", "logger=none", "callbacks.history.verbose=false"]


def _run_folder(path: Path, overrides: list[str], **files: str) -> Path:
    """A run folder as a run leaves it: its recorded overrides and ``files`` (name: text)."""
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    for name, text in files.items():
        (path / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (path / name.replace("__", "/")).write_text(text)
    return path


def _metrics(status: str, **more: object) -> str:
    return json.dumps({"status": status, **more})


def test_how_a_command_starts_in_a_folder(tmp_path: Path) -> None:
    command = ["experiment=xor", "seed=1", "trainer.max_epochs=20"]
    # Nothing there, or only what a start writes before its run: a new run.
    assert plan_start(tmp_path / "new", command, False, False, False).kind == "fresh"
    assert plan_start(_run_folder(tmp_path / "empty", ["seed=9"]), command, False, False, False).kind == "fresh"
    # The same experiment (resume= and hydra.* aside; a sweep writes false as False) stopped with a
    # last.ckpt: continued, one more restart.
    same = [*command, "hydra.run.dir=x", "resume_with_changes=false"]
    stopped = _run_folder(
        tmp_path / "stopped",
        command,
        **{"metrics.json": _metrics("interrupted", restarts=2), "checkpoints__last.ckpt": ""},
    )
    plan = plan_start(stopped, same, False, False, False)
    assert (plan.kind, plan.restarts, plan.changed) == ("continue", 3, False)
    assert plan.note is not None and "continuing it from its checkpoints/last.ckpt (restart 3)" in plan.note
    sweep_trial = _run_folder(
        tmp_path / "trial", ["x=False", *command], **{"metrics.json": _metrics("killed"), "checkpoints__last.ckpt": ""}
    )
    assert plan_start(sweep_trial, ["x=false", *command], False, False, True).kind == "continue"
    # Completed: nothing left to train, whichever way it is asked.
    done = _run_folder(
        tmp_path / "done", command, **{"metrics.json": _metrics("completed"), "checkpoints__last.ckpt": ""}
    )
    for resume in (False, True):
        plan = plan_start(done, command, resume, resume, False)
        assert plan.kind == "done" and plan.note is not None and "its results stay as they are" in plan.note
    # Stopped before its first checkpoint: started again, and said so.
    early = _run_folder(tmp_path / "early", command, **{"metrics.json": _metrics("failed"), "history.csv": "epoch\n"})
    plan = plan_start(early, command, False, False, False)
    assert plan.kind == "again" and plan.note is not None and "kept no checkpoint (failed)" in plan.note

    def refused(folder: Path, overrides: list[str], resume: bool = False, multirun: bool = False) -> str:
        with pytest.raises(UserError) as refusal:
            plan_start(folder, overrides, resume, False, multirun)
        return str(refusal.value)

    # Another experiment: refused, naming what differs and how to continue the run that is there.
    line = refused(stopped, ["experiment=xor", "seed=2", "trainer.max_epochs=20"])
    assert line.startswith(f"{stopped} holds another run (seed=1 in the run, seed=2 here); nothing was written")
    assert line.endswith(f"continue that run with: python -m experiments.train {' '.join(command)} resume={stopped}")
    assert "hydra.sweep.dir=<new folder>" in refused(stopped, ["seed=2"], multirun=True)
    # resume= with other overrides: refused with the command that continues it unchanged; a
    # deliberate change goes through with resume_with_changes=true, and is recorded as such.
    line = refused(done, ["experiment=xor", "seed=1", "trainer.max_epochs=40"], resume=True)
    assert "trainer.max_epochs=20 in the run, trainer.max_epochs=40 here" in line
    assert "resume_with_changes=true" in line
    plan = plan_start(done, ["experiment=xor", "seed=1", "trainer.max_epochs=40"], True, True, False)
    assert (plan.kind, plan.changed, plan.restarts) == ("continue", True, 1)
    # A folder that is no run of ours, and resume= inside a sweep.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert refused(user, command).startswith(f"{user} holds files that are not a run of this project (notes.txt)")
    assert "not the trials of a sweep" in refused(stopped, command, resume=True, multirun=True)
    damaged = _run_folder(tmp_path / "damaged", command)
    (damaged / ".hydra" / "overrides.yaml").write_text("{not: [yaml")
    assert refused(damaged, command).startswith(f"cannot read {damaged / '.hydra' / 'overrides.yaml'}")


def _files(run_dir: Path) -> dict[str, tuple[bytes, float]]:
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow  # three XOR runs, two at once: about 40 s
def test_a_run_started_again_in_its_folder_continues_and_nothing_overwrites_another(tmp_path: Path) -> None:
    """The same command twice in one folder, the first stopped by SIGTERM (as a SLURM requeue
    does): the second continues it, and ends bit-identical to a run never stopped; started once
    more it has nothing left to train; another experiment there, and a user's folder, are refused
    with nothing written."""
    command = [*XOR, "trainer.max_epochs=200", "checkpoint_every_n_steps=20"]
    reference = tmp_path / "reference"
    uninterrupted = start("train", *command, f"hydra.run.dir={reference}", cwd=tmp_path)  # on the other core
    run_dir = tmp_path / "run"
    first = start("train", *command, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(first.pid, signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    assert first.returncode == 143, err[-2000:]
    stopped_at = json.loads((run_dir / "metrics.json").read_text())["step"]
    assert 0 < stopped_at < 200
    segment = (run_dir / "history.csv").read_text().splitlines()

    again = run("train", *command, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    notes = [line for line in again.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {run_dir} holds this run (interrupted (SIGTERM) at step {stopped_at} (epoch {stopped_at + 1}); "
        f"checkpoints/last.ckpt holds step {stopped_at}; continue with: python -m experiments.train "
        f"{' '.join(command)} resume={run_dir}); continuing it from its checkpoints/last.ckpt (restart 1)"
    ], again.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["restarts"] == 1 and metrics["epochs"] == 200
    # The first segment's rows stand as they were written (not rewritten from epoch 1).
    assert (run_dir / "history.csv").read_text().splitlines()[: len(segment)] == segment
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.communicate()[1][-2000:]
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    got = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert json.loads((reference / "metrics.json").read_text())["test"] == metrics["test"]

    # Completed: the same command again has nothing left to train and rewrites nothing.
    before = _files(run_dir)
    code, _, err = call_cli("train", *command, f"hydra.run.dir={run_dir}")
    assert code == 0, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith("note:")] == [
        f"note: {run_dir} holds this run, completed: nothing left to train, its results stay as they are (to "
        f"train it further: python -m experiments.train {' '.join(command)} resume={run_dir} "
        "resume_with_changes=true trainer.max_epochs=<more>)"
    ]
    assert _files(run_dir) == before
    # Another experiment in that folder, and in a user's folder: one line, nothing written.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for folder in (run_dir, user):
        kept = _files(folder)
        code, _, err = call_cli("train", *XOR, "trainer.max_epochs=3", f"hydra.run.dir={folder}")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {folder} holds "), err[-2000:]
        assert _files(folder) == kept and sorted(os.listdir(user)) == ["notes.txt"]
