"""Bad inputs that need more than one command to set up: a read-only run folder, a name that
climbs out of outputs/, two sweeps creating one study at once, and Ctrl-C on a sweep."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    command = [sys.executable, "-m", "experiments.train", "experiment=xor", "trainer.max_epochs=2", "logger=none",
               f"hydra.run.dir={folder}"]
    result = subprocess.run(_read_only_command(folder, command), cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot use {folder}/train.log: ")
    assert "hydra.run.dir=<writable folder>" in lines[0]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


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
    assert lines == [f"error: name={name!r} must be one folder name: no '/', '\\' or '..' "
                     "(runs go to outputs/<name>/); pass name=my_experiment"]
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


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ctrl_c_on_a_sweep_is_one_line_and_exit_code_130(n_jobs: int, tmp_path: Path) -> None:
    process = start("train", "-m", "experiment=xor", "hparams_search=xor_tpe", f"hydra.sweeper.n_jobs={n_jobs}",
                    "logger=none", "trainer.max_epochs=100000", cwd=tmp_path)
    try:
        trial = tmp_path / "outputs" / "xor" / "sweeps" / "xor_tpe" / "0"
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
