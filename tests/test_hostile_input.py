"""Bad inputs that need more than one command to set up: a read-only run folder, a name that
climbs out of outputs/, two sweeps creating one study at once, and Ctrl-C on a sweep."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reliability_helpers import call_cli, child_env, completed_results, start


def _read_only_command(folder: Path, command: list[str]) -> list[str]:
    """``command`` run where ``folder`` cannot be written: by permissions, or for root (whom
    permissions don't stop) on a read-only bind mount in a mount namespace of its own."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return command
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(folder), *command]


def test_a_read_only_run_folder_is_one_line(xor_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(xor_run, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "experiment=xor",
        "trainer.max_epochs=2",
        "logger=none",
        f"hydra.run.dir={folder}",
    ]
    result = subprocess.run(
        _read_only_command(folder, command), cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot use {folder}/train.log: ")
    assert "hydra.run.dir=<writable folder>" in lines[0]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


@contextlib.contextmanager
def _small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A file system of ``size`` (tmpfs) mounted on ``folder``; root only."""
    folder.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode
    ):
        pytest.skip("mounting a small file system needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_disk_that_fills_mid_run_is_one_line_and_leaves_whole_checkpoints(tmp_path: Path) -> None:
    # The run folder on a 120 KB disk: it fills while a checkpoint is written (two 27 KB ones and
    # the copy being written). Before: a truncated last.ckpt (no resume possible), a line naming a
    # temporary file elsewhere, no status.
    with _small_disk(tmp_path / "disk", "120k") as disk:
        run_dir = disk / "run"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.train",
                "experiment=xor",
                "trainer.max_epochs=10",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: cannot write {run_dir}/"), line
        assert f"the disk of {disk} is full; free some space" in line
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
        # Every file is whole: the checkpoints load, no temporary file is left.
        for ckpt in (run_dir / "checkpoints").glob("*"):
            assert ckpt.suffix == ".ckpt", ckpt
            torch.load(ckpt, weights_only=True)
        assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
        # Given room, the same run continues from its last checkpoint and completes.
        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)
        resumed = subprocess.run(
            [sys.executable, "-m", "experiments.train", "experiment=xor", "trainer.max_epochs=10", f"resume={run_dir}"],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "..\\escape"])
def test_a_name_that_is_not_one_folder_is_refused(name: str, tmp_path: Path) -> None:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    os.chdir(cwd)  # call_cli runs in this process; outputs/ is relative to the working directory
    try:
        code, _, err = call_cli("train", "experiment=xor", "trainer.max_epochs=1", "logger=none", f"name={name}")
    finally:
        os.chdir(tmp_path)
    lines = err.strip().splitlines()
    assert code == 2
    assert lines == [
        f"error: name={name!r} must be one folder name: no '/', '\\' or '..' "
        "(runs go to outputs/<name>/); pass name=my_experiment"
    ]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b"]


def _open_study(url: str, barrier: object, failures: object) -> None:
    import optuna

    from experiments.sweeps import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    barrier.wait()  # type: ignore[attr-defined]
    try:
        optuna.create_study(study_name="study", storage=open_storage(url), load_if_exists=True)
    except Exception as err:  # noqa: BLE001 - the test counts them
        failures.put(f"{type(err).__name__}: {str(err)[:200]}")  # type: ignore[attr-defined]


def test_sweeps_creating_one_new_study_at_once_do_not_race(tmp_path: Path) -> None:
    # Without the lock, 4 processes creating one new SQLite study failed in 5 rounds of 5.
    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'round{round_}' / 'optuna.db'}"
        (tmp_path / f"round{round_}").mkdir()
        barrier, failures = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_open_study, args=(url, barrier, failures)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        assert failures.empty(), failures.get()


@pytest.mark.parametrize("sweep", ["optuna, 1 worker", "optuna, 2 workers", "grid, 2 workers"])
def test_ctrl_c_on_a_sweep_is_one_line_and_exit_code_130(sweep: str, tmp_path: Path) -> None:
    if sweep.startswith("grid"):  # Hydra's multirun through our parallel launcher (2 cores here: 2 workers)
        search = ["seed=0,1,2,3", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'grid'}"]
        trial = tmp_path / "grid" / "0"
    else:
        search = ["hparams_search=xor_tpe", f"hydra.sweeper.n_jobs={sweep.split()[1]}"]
        trial = tmp_path / "outputs" / "xor" / "sweeps" / "xor_tpe" / "0"
    process = start("train", "-m", "experiment=xor", *search, "logger=none", "trainer.max_epochs=100000", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (trial / ".hydra").is_dir() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        time.sleep(3)  # well inside the first trial's training
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # CPython can lose a KeyboardInterrupt that lands inside a finaliser (seen once in a few
            # dozen runs on a loaded machine); a user then presses Ctrl-C again, and so does this test.
            os.killpg(process.pid, signal.SIGINT)
            _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: interrupted (Ctrl-C); continue a run with resume=latest (or resume=<run dir>), "
        "an Optuna sweep by running the same command again"
    )
    assert completed_results(tmp_path) == []
    if sweep.startswith("grid"):  # the jobs not yet started when Ctrl-C came are not started
        assert not (tmp_path / "grid" / "2").exists() and not (tmp_path / "grid" / "3").exists()


def _grid_with_two_workers(tmp_path: Path, seeds: str) -> tuple[subprocess.Popen[str], Path, list[str]]:
    """An XOR grid multirun that trains until stopped, two jobs at a time, once its second job has
    started: the command, its sweep folder and its two worker processes."""
    sweep = tmp_path / "grid"
    process = start(
        "train",
        "-m",
        "experiment=xor",
        f"seed={seeds}",
        "hydra.launcher.n_jobs=2",
        "logger=none",
        "trainer.max_epochs=100000",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 120
    while not (sweep / "1" / "config.yaml").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    return process, sweep, workers


def _end(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def test_a_multirun_worker_killed_from_outside_is_one_line_naming_the_lost_jobs(tmp_path: Path) -> None:
    process, _, workers = _grid_with_two_workers(tmp_path, "0,1")
    try:
        assert workers, "no worker processes"
        os.kill(int(workers[0]), signal.SIGKILL)  # the OOM killer, or a user's kill
        _, err = process.communicate(timeout=60)
    finally:
        _end(process)
    assert process.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: a worker of this multirun died (killed, or out of memory), and jobs [0, 1] did not finish; "
        "rerun them (resume=<job dir>), or the multirun with hydra.launcher.n_jobs=1"
    )
    assert completed_results(tmp_path) == []


def test_sigterm_to_a_multirun_stops_its_jobs_starts_no_other_and_exits_143(tmp_path: Path) -> None:
    # What SLURM or Kubernetes send before preemption, to the command: its workers must not run on.
    process, sweep, workers = _grid_with_two_workers(tmp_path, "0,1,2,3")
    try:
        assert len(workers) == 2
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        alive = [w for w in workers if subprocess.run(["kill", "-0", w], capture_output=True).returncode == 0]
    finally:
        _end(process)
    assert process.returncode == 143, err[-3000:]
    assert alive == []
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM); the jobs that were running stopped")
    assert not (sweep / "2").exists() and completed_results(tmp_path) == []
