"""Bad inputs that need more than one command to set up: a read-only run folder, a name that
climbs out of outputs/, two sweeps creating one study at once; and sweeps that survive their
workers: Ctrl-C and SIGTERM to a sweep, a job or worker killed or stopped from outside, the sweep's
own process killed, a second sweep into a sweep's folder, damaged sweep folders summarised."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from experiments.signals import Terminated, signals_held, sigterm_raises
from experiments.sweeps import open_storage

from conftest import selected
from reliability_helpers import call_cli, child_env, completed_results, run, start


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


def _ask(url: str, barrier: object, asked: object) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="queued", storage=open_storage(url))
    barrier.wait()  # type: ignore[attr-defined]
    asked.put(study.ask().number)  # type: ignore[attr-defined]


def test_workers_asking_at_once_never_take_one_queued_trial_twice(tmp_path: Path) -> None:
    # Before: on SQLite, two workers took one queued trial (a retry of a killed one) and ran it in
    # one folder; the second was refused there and its worker ended with a traceback (exit code 3):
    # 4 processes asking at once took a queued trial twice in 7 rounds of 8.
    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'round{round_}.db'}"
        study = optuna.create_study(study_name="queued", storage=open_storage(url))
        study.enqueue_trial({"x": 1.0})
        study.enqueue_trial({"x": 2.0})
        barrier, asked = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_ask, args=(url, barrier, asked)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        assert sorted(asked.get(timeout=5) for _ in workers) == [0, 1, 2, 3]


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
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # CPython can lose a KeyboardInterrupt that lands inside a finaliser (seen once in a few
            # dozen runs on a loaded machine); a user then presses Ctrl-C again, and so does this test.
            os.killpg(process.pid, signal.SIGINT)
            out, err = process.communicate(timeout=90)
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
    # The summary of the sweep is written all the same: the running trials, interrupted (an Optuna
    # sweep's too, before: their folders went at once and no summary listed them).
    with open(trial.parent / "summary.csv", newline="") as handle:
        statuses = [r["status"] for r in csv.DictReader(handle)]
    assert statuses == ["interrupted"] * {"optuna, 1 worker": 1, "grid, 2 workers": 2}.get(sweep, len(statuses))
    assert statuses and "summary: 0/" in out


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


def _holder(run_dir: Path) -> int | None:
    """The process that holds a trial's folder (its job's process, or the Optuna worker running it)."""
    try:
        return int(json.loads((run_dir / ".lock.holder.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _wait_for(condition: Callable[[], object], process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, (process.communicate()[1] or "the sweep ended")[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sigterm_to_a_multirun_stops_its_jobs_starts_no_other_and_exits_143(tmp_path: Path) -> None:
    # What SLURM or Kubernetes send before preemption, to the command: its workers must not run on.
    process, sweep, workers = _grid_with_two_workers(tmp_path, "0,1,2,3")
    try:
        assert len(workers) == 2
        # A second sweep into the folder of this live one is refused in one line, before it writes
        # anything there (Hydra would rewrite the sweep's multirun.yaml first).
        before = (sweep / "multirun.yaml").read_bytes()
        code, _, second = call_cli(
            "train", "-m", "experiment=xor", "seed=0", "optimizer.lr=0.9", "logger=none", f"hydra.sweep.dir={sweep}"
        )
        assert code == 2 and len(second.strip().splitlines()) == 1, second
        assert second.startswith(f"error: {sweep} is in use by the sweep of process {process.pid} on ")
        assert (sweep / "multirun.yaml").read_bytes() == before
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        alive = [w for w in workers if _alive(int(w))]
    finally:
        _end(process)
    assert process.returncode == 143, err[-3000:]
    assert alive == []
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM); the jobs that were running stopped")
    assert not (sweep / "2").exists() and completed_results(tmp_path) == []
    with open(sweep / "summary.csv", newline="") as handle:  # written for what ran
        assert [r["status"] for r in csv.DictReader(handle)] == ["interrupted", "interrupted"]


# Secrets (issue 23, class 4) and lines built from files someone else wrote -------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql+psycopg://postgres:Hunter2@127.0.0.1:5432/db", "postgresql+psycopg://postgres:***@127.0.0.1:5432/db"),
        ("postgresql://u@h:1/db?password=Hunter2&sslmode=require", "postgresql://u@h:1/db?password=***&sslmode=require"),
        ("postgresql://u@h/db?sslpassword=Hunter2", "postgresql://u@h/db?sslpassword=***"),
        ("mysql://u:pa/ss?#w@host/db", "mysql://u:***@host/db"),  # SQLAlchemy's password ends at "@"
        ("mysql://a@b:Hunter2@host/db", "mysql://a@b:***@host/db"),
        ("hydra.sweeper.storage='postgresql://u:Hunter2@h/db' PGPASSWORD=Hunter2", "hydra.sweeper.storage='postgresql://u:***@h/db' PGPASSWORD=***"),
        ("host=h user=u password=Hunter2 dbname=d", "host=h user=u password=*** dbname=d"),
        ("sqlite:////tmp/a:b/optuna.db", "sqlite:////tmp/a:b/optuna.db"),
        ("https://example.com/a:b@c", "https://example.com/a:b@c"),
        ("postgresql://user@host:5432/db", "postgresql://user@host:5432/db"),
        # SQLAlchemy decodes a query's keys, takes a user name with a space, and a password may
        # come through an environment variable that an override sets
        ("postgresql://u@h/db?pass%77ord=Hunter2", "postgresql://u@h/db?pass%77ord=***"),
        ("postgresql://u@h/db?%50ASSWORD%3dHunter2", "postgresql://u@h/db?%50ASSWORD%3d***"),
        ("postgresql://u@h/db?dsn=password%3DHunter2", "postgresql://u@h/db?dsn=password%3D***"),
        ("'postgresql://my user:Hunter2@h/db'", "'postgresql://my user:***@h/db'"),
        ("+hydra.job.env_set.PGPASSWORD=Hunter2", "+hydra.job.env_set.PGPASSWORD=***"),
    ],
)  # fmt: skip
def test_a_password_is_masked_in_any_form_sqlalchemy_takes(text: str, masked: str) -> None:
    from experiments.redact import redact, redacted

    assert redact(text) == masked
    assert redacted({"a": [text, 1, None]}) == {"a": [masked, 1, None]}


def test_a_password_under_a_key_that_names_one_is_masked() -> None:
    # hydra.job.env_set.PGPASSWORD=... lands in hydra.yaml and multirun.yaml as a key and its value
    from experiments.redact import redacted

    env = {"env_set": {"PGPASSWORD": "Hunter2", "sslpassword": 7, "OTHER": "x", "pwd": None}}
    assert redacted(env) == {"env_set": {"PGPASSWORD": "***", "sslpassword": "***", "OTHER": "x", "pwd": None}}


def test_the_lock_holder_record_holds_no_password_and_its_lines_no_control_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from experiments.errors import UserError
    from experiments.record import HOLDER, RunLock

    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "hydra.sweeper.storage=postgresql://u:Hunter2@h/db"])
    # the sweep folder's record too: before, it held the password, and kept it after a SIGKILL
    from hydra_plugins.experiments_launcher.sweep_folder import SweepLock

    sweep_lock = SweepLock(tmp_path / "sweep").acquire()
    try:
        record = json.loads((tmp_path / "sweep" / HOLDER).read_text())
        assert record["command"] == "train.py -m hydra.sweeper.storage=postgresql://u:***@h/db"
    finally:
        sweep_lock.release()
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    try:
        record = json.loads((tmp_path / "run" / HOLDER).read_text())
        assert record["command"] == "train.py -m hydra.sweeper.storage=postgresql://u:***@h/db"
        # a holder record written by someone else, with terminal escapes: the refusal prints none
        (tmp_path / "run" / HOLDER).write_text(
            json.dumps({"pid": "\x1b[2J\x1b]0;owned\x07", "host": "h", "since": "t"})
        )
        with pytest.raises(UserError) as refused:
            RunLock(tmp_path / "run").acquire()
        assert "\x1b" not in str(refused.value) and "\x07" not in str(refused.value)
    finally:
        lock.release()
    # the same record left behind by a killed process: the note printed on resume has none either
    (tmp_path / "run" / HOLDER).write_text(
        json.dumps({"pid": "\x1b[31m1\x1b[0m", "host": "h\x1b]0;x\x07", "since": "t"})
    )
    code, _, err = call_cli(
        "train", "experiment=xor", "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert "note: the previous process of" in err and "\x1b" not in err and "\x07" not in err
    assert code == 0, err
    # how a received run ended, in its metrics.json: the note of its continuation is one printable line
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics.update(status="failed", error="\x1b]0;owned\x07\x1b[31mred\nsecond line")
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    code, _, err = call_cli(
        "train", "experiment=xor", "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"
    )
    [note] = [line for line in err.splitlines() if "holds this run" in line]
    assert note.startswith("note: ") and "(red / second line); continuing it from its checkpoints/last.ckpt" in note
    assert "\x1b" not in err and "\x07" not in err and "second line" not in err.replace(note, "")
    assert code == 0, err


def test_a_storage_url_that_cannot_be_opened_is_one_line_without_its_password(tmp_path: Path) -> None:
    from conftest import StartedCli

    sweep = ["-m", "experiment=xor", "hparams_search=xor_tpe", "logger=none"]
    urls = {
        "server down": "postgresql+psycopg://postgres@127.0.0.1:1/nodb?password=Hunter2SecretPW",
        "bad port": "postgresql+psycopg://postgres:Hunter2SecretPW@127.0.0.1:notaport/nodb",
    }
    started = {k: StartedCli("train", *sweep, f"hydra.sweeper.storage='{u}'", cwd=tmp_path) for k, u in urls.items()}
    for name, command in started.items():
        done = command.wait()
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (name, done.stderr[-2000:])
        assert lines[0].startswith("error: hydra.sweeper.storage=postgresql+psycopg://postgres") and "***" in lines[0]
        assert "Hunter2SecretPW" not in done.stdout + done.stderr
    assert not (tmp_path / "outputs").exists()


OPTUNA = [
    "experiment=xor",
    "hparams_search=xor_tpe",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.n_jobs=2",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.pruner.n_startup_trials=100",  # reports every epoch, never prunes
    "logger=none",
    "callbacks.history.verbose=false",
]


def _optuna_trials(sweep: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="xor_tpe", storage=f"sqlite:///{sweep / 'optuna.db'}").trials


class _Sweep:
    """A sweep that the fixture below starts, and what a thread of this process does to it once its
    trials run (so that the sweeps run together), waited for by its own test."""

    def __init__(self, root: Path, name: str, args: list[str], act: Callable[[_Sweep], None] | None = None) -> None:
        self.sweep = root / name
        self.done: dict[str, object] = {}  # what was done to it
        self.problem: BaseException | None = None
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no full pipe holds it up
        self.process = subprocess.Popen(
            [sys.executable, "-m", "experiments.train", "-m", *args, f"hydra.sweep.dir={self.sweep}"],
            cwd=root,
            env=child_env(),
            stdout=self.out,
            stderr=self.err,
            text=True,
            start_new_session=True,
        )
        self.thread = threading.Thread(target=self._act, args=(act,), daemon=True) if act else None
        if self.thread is not None:
            self.thread.start()

    def _act(self, act: Callable[[_Sweep], None]) -> None:
        try:
            act(self)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.problem = err

    def running(self, *jobs: str) -> list[int]:
        """Once trials ``jobs`` run: the processes that hold their folders."""
        _wait_for(lambda: all(_holder(self.sweep / job) for job in jobs), self.process)
        return [_holder(self.sweep / job) or 0 for job in jobs]

    def first_running(self) -> str:
        """Once trial 0 or 1 runs: which."""
        _wait_for(lambda: _holder(self.sweep / "0") or _holder(self.sweep / "1"), self.process)
        return "0" if _holder(self.sweep / "0") else "1"

    def wait(self, timeout: float = 300) -> tuple[int, str, str]:
        """The sweep's exit code, stdout and stderr; it is killed if it outlives ``timeout``."""
        if self.thread is not None:
            self.thread.join(timeout)
        try:
            self.process.wait(timeout=timeout)
        finally:
            _end(self.process)
        assert self.problem is None, repr(self.problem)
        self.out.seek(0)
        self.err.seek(0)
        return self.process.returncode, self.out.read(), self.err.read()


def _kill_one_stop_another(sweep: _Sweep) -> None:
    killed, stopped = sweep.running("0", "1", "2")[:2]
    os.kill(killed, signal.SIGKILL)  # the OOM killer, or kill -9
    os.kill(stopped, signal.SIGTERM)  # a signal to that job alone


def _kill_the_sweep(sweep: _Sweep) -> None:
    jobs = sweep.done["jobs"] = sweep.running("0", "1")
    os.kill(sweep.process.pid, signal.SIGKILL)  # the sweep's own process alone
    deadline = time.monotonic() + 10
    while any(_alive(job) for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
    sweep.done["alive"] = [job for job in jobs if _alive(job)]
    for job in sweep.done["alive"]:  # type: ignore[attr-defined]
        os.kill(job, signal.SIGKILL)


def _terminate_the_sweep(sweep: _Sweep) -> None:
    sweep.done["workers"] = sweep.running("1", "2")  # trial 0: the one completed before (below)
    sweep.process.send_signal(signal.SIGTERM)


def _a_trial_completed_before(sweep: Path) -> None:
    """The study of ``sweep`` with a trial that an earlier run of the same command completed."""
    sweep.mkdir(parents=True)
    study = optuna.create_study(study_name="xor_tpe", storage=f"sqlite:///{sweep / 'optuna.db'}")
    lr = optuna.distributions.FloatDistribution(0.001, 0.3, log=True)
    study.add_trial(
        optuna.trial.create_trial(params={"optimizer.lr": 0.01}, distributions={"optimizer.lr": lr}, value=0.1)
    )


def _kill_a_worker(sweep: _Sweep) -> None:
    victim = sweep.done["victim"] = _holder(sweep.sweep / sweep.first_running()) or 0  # the Optuna worker
    os.kill(victim, signal.SIGKILL)


def _stop_a_worker(sweep: _Sweep) -> None:
    trial = sweep.done["trial"] = sweep.first_running()
    worker = _holder(sweep.sweep / trial) or 0
    os.kill(worker, signal.SIGSTOP)
    try:  # until another worker has failed its trial as stale
        _wait_for(
            lambda: any(str(t.number) == trial and t.state.name == "FAIL" for t in _optuna_trials(sweep.sweep)),
            sweep.process,
            180,
        )
    finally:
        os.kill(worker, signal.SIGCONT)


GRID = ["experiment=xor", "logger=none", "callbacks.history.verbose=false"]
GRID_KILLED = [*GRID, "seed=0,1", "hydra.launcher.n_jobs=2", "trainer.max_epochs=60"]


@pytest.fixture(scope="module")
def hostile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Sweep]]:
    """Six sweeps started together, each with what is done to it (each started only when its test
    runs): a grid sweep whose jobs are killed and stopped one by one, one whose own process is
    killed, one whose trials raise, and Optuna sweeps sent SIGTERM, with a worker killed, and with a
    worker stopped past its grace period."""
    root = tmp_path_factory.mktemp("hostile")
    sweeps = {
        "jobs_killed": (
            "test_a_sweep_goes_on_past_a_job_killed_and_a_job_stopped_from_outside",
            [*GRID, "seed=0,1,2", "hydra.launcher.n_jobs=3", "trainer.max_epochs=200"],
            _kill_one_stop_another,
        ),
        "sweep_killed": (
            "test_a_sweep_killed_with_sigkill_leaves_no_process_and_its_command_completes_it",
            GRID_KILLED,
            _kill_the_sweep,
        ),
        "raising": (
            "test_a_trial_that_raises_a_message_of_many_lines_is_one_line_and_one_row",
            [*GRID, "data._target_=reliability_helpers.BrokenBlobs", "seed=0,1"],
            None,
        ),
        "optuna_terminated": (
            "test_sigterm_to_an_optuna_sweep_stops_its_workers_and_exits_143",
            [*OPTUNA, "hydra.sweeper.n_trials=3", "trainer.max_epochs=100000"],
            _terminate_the_sweep,
        ),
        "optuna_worker_killed": (
            "test_an_optuna_worker_killed_costs_only_its_trial",
            [*OPTUNA, "hydra.sweeper.grace_period=6", "trainer.max_epochs=80"],
            _kill_a_worker,
        ),
        "optuna_worker_stopped": (
            "test_an_optuna_worker_stopped_past_its_grace_period_has_its_late_result_dropped",
            [*OPTUNA, "hydra.sweeper.grace_period=6", "trainer.max_epochs=80"],
            _stop_a_worker,
        ),
    }
    if selected(request, sweeps["optuna_terminated"][0]):
        _a_trial_completed_before(root / "optuna_terminated")
    started = {
        name: _Sweep(root, name, args, act) for name, (test, args, act) in sweeps.items() if selected(request, test)
    }
    yield started
    for sweep in started.values():
        with contextlib.suppress(BaseException):
            sweep.wait(timeout=1)


def test_a_sweep_goes_on_past_a_job_killed_and_a_job_stopped_from_outside(hostile: dict[str, _Sweep]) -> None:
    # Three jobs at once; one job's process is killed, another is sent SIGTERM alone. Before: the
    # pool broke, every job was lost, no summary, exit code 2.
    code, out, err = hostile["jobs_killed"].wait()
    sweep = hostile["jobs_killed"].sweep
    assert code == 3, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: 2 of 3 trials did not complete (1 interrupted, 1 killed); see {sweep / 'summary.md'}"
    )
    metrics = {job: json.loads((sweep / job / "metrics.json").read_text()) for job in "012"}
    assert {job: m["status"] for job, m in metrics.items()} == {"0": "killed", "1": "interrupted", "2": "completed"}
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("killed: ")] == [
        f"killed: killed by SIGKILL (out of memory, or kill -9): process {metrics['0']['pid']} of the sweep ended "
        f"before its run recorded how; run the sweep's command again to continue it | {sweep / '0'}"
    ]
    [stopped] = [line for line in lines if line.startswith("interrupted: ")]
    # (as the run says it, or, for a signal that came before the run began, as the sweep does)
    assert "SIGTERM" in stopped and stopped.endswith(f" | {sweep / '1'}")
    with open(sweep / "summary.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["completed", "interrupted", "killed"]
    assert OmegaConf.load(sweep / "best.yaml").run_dir == str(sweep / "2")
    # The grid's picture of what completed, as for a sweep that ran to its end.
    assert (sweep / "objective.png").is_file() and "(objective.png)" in (sweep / "summary.md").read_text()


def test_a_sweep_killed_with_sigkill_leaves_no_process_and_its_command_completes_it(
    hostile: dict[str, _Sweep], tmp_path: Path
) -> None:
    killed = hostile["sweep_killed"]
    code, _, _ = killed.wait()
    assert code == -signal.SIGKILL
    # Its jobs died with it, within seconds (before: they ran the queued jobs, then waited forever).
    assert killed.done["jobs"] and killed.done["alive"] == []
    # The same command again, in the same folder, completes the sweep.
    sweep = killed.sweep
    again = run("train", "-m", *GRID_KILLED, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    with open(sweep / "summary.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["completed", "completed"]
    # Another sweep into that sweep's folder is refused in one line, and writes nothing there.
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    code, _, err = call_cli("train", "-m", *GRID_KILLED, "optimizer.lr=0.5", f"hydra.sweep.dir={sweep}")
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {sweep} holds another sweep ({' '.join(o for o in GRID_KILLED if not o.startswith('hydra.'))}); "
        "nothing was written there: pick a new folder (hydra.sweep.dir=<new folder>), or run that sweep's own "
        "command again to continue it"
    ]
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_a_trial_that_raises_a_message_of_many_lines_is_one_line_and_one_row(hostile: dict[str, _Sweep]) -> None:
    code, out, err = hostile["raising"].wait()
    sweep = hostile["raising"].sweep
    assert code == 3, err[-3000:]
    reason = "RuntimeError: disk said no / second line | with a pipe / third line"
    failed = sorted(line for line in out.splitlines() if line.startswith("failed: "))
    # Its traceback (a bug, not a setting) is in the trial's train.log, not on the terminal: a
    # sweep of many such trials printed a wall of them.
    assert failed == [f"failed: {reason} (traceback in {sweep / job / 'train.log'}) | {sweep / job}" for job in "01"]
    assert "Traceback" not in out and "Traceback" not in err
    assert all("Traceback" in (sweep / job / "train.log").read_text() for job in "01")
    table = [line for line in (sweep / "summary.md").read_text().splitlines()[2:] if line]
    assert len(table) == 4 and all(line.startswith("| ") and line.endswith(" |") for line in table)
    assert all(reason.replace("|", "\\|") in line for line in table[2:])


def test_sigterm_to_an_optuna_sweep_stops_its_workers_and_exits_143(hostile: dict[str, _Sweep]) -> None:
    # Before: SIGTERM reached the sweep's process only, whose workers ran on; it waited forever.
    terminated = hostile["optuna_terminated"]
    code, out, err = terminated.wait(timeout=120)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: interrupted (SIGTERM); continue a run with resume=latest (or resume=<run dir>), "
        "an Optuna sweep by running the same command again"
    )
    assert [w for w in terminated.done["workers"] if _alive(w)] == []  # type: ignore[attr-defined]
    # The stopped trials are failed and queued again, for the same command to run.
    trials = _optuna_trials(terminated.sweep)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL", "FAIL", "WAITING", "WAITING"]
    # The sweep ends with its summary: the stopped trials listed, interrupted (before: their folders
    # were dropped at once, and the summary had no row).
    with open(terminated.sweep / "summary.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["interrupted", "interrupted"]
    assert "summary: 0/2 runs completed" in out
    assert not (terminated.sweep / "best.yaml").exists()
    # Optuna's figures of what the study completed (before: drawn only by a sweep that ran to its end).
    assert (terminated.sweep / "optuna_history.png").is_file()
    assert "(optuna_history.png)" in (terminated.sweep / "summary.md").read_text()


def test_an_optuna_worker_killed_costs_only_its_trial(hostile: dict[str, _Sweep]) -> None:
    # Before: exit code 1, "RuntimeError: sweep workers [...] stopped with an error (see their
    # traceback above)" (there was none), and no summary.
    code, _, err = hostile["optuna_worker_killed"].wait()
    sweep, victim = hostile["optuna_worker_killed"].sweep, hostile["optuna_worker_killed"].done["victim"]
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    [note] = [line for line in err.splitlines() if line.startswith("note: sweep worker ")]
    assert "Heartbeat of storage is supposed to be used with Study.optimize" not in err  # the sweeper's way
    assert f"(pid {victim}) killed by SIGKILL (out of memory, or kill -9) during trial " in note
    trials = _optuna_trials(sweep)
    killed = [t for t in trials if t.state.name == "FAIL"]
    assert killed and sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert not any((sweep / str(t.number)).exists() for t in killed)  # its half run goes; its retry counts
    with open(sweep / "summary.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["completed", "completed"]
    assert (sweep / "best.yaml").is_file() and (sweep / "optuna_history.png").is_file()


def test_an_optuna_worker_stopped_past_its_grace_period_has_its_late_result_dropped(
    hostile: dict[str, _Sweep],
) -> None:
    # Before: "ValueError: Cannot tell a FAIL trial.", exit code 1, no summary.
    code, out, err = hostile["optuna_worker_stopped"].wait()
    sweep, trial = hostile["optuna_worker_stopped"].sweep, hostile["optuna_worker_stopped"].done["trial"]
    assert code == 0, err[-3000:]
    assert "Traceback" not in out + err
    assert f"failed: trial {trial} was failed by another worker of the sweep while it ran" in out
    with open(sweep / "summary.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["completed", "completed"]
    assert not (sweep / str(trial)).exists() and (sweep / "best.yaml").is_file()


def test_a_stop_that_lands_in_sqlalchemy_closing_a_connection_is_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # Before: SIGTERM to an Optuna sweep that landed while a worker's connection closed printed
    # SQLAlchemy's "Exception closing connection" and a traceback of Terminated (the worker still
    # ended 143, the sweep with its one line).
    from hydra_plugins.experiments_sweeper.study import quiet_optuna_warnings

    quiet_optuna_warnings()
    pool = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
    for error in (Terminated(), KeyboardInterrupt(), OSError("disk I/O error")):
        try:
            raise error
        except BaseException:  # noqa: BLE001 - as SQLAlchemy's pool logs it (then raises it again)
            pool.error("Exception closing connection %r", "<sqlite3.Connection>", exc_info=True)
    # The stops are left out; any other error of the pool stays, traceback and all.
    assert caplog.text.count("Exception closing connection") == 1 and "disk I/O error" in caplog.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_waits_until_a_stopped_trial_is_told(signum: int) -> None:
    # Before: SIGTERM or Ctrl-C twice (a terminal's group, an impatient user) cut the worker's
    # telling of a completed run: the trial stayed running, its result was lost, and the next
    # sweep of the study ran its parameters again and removed the completed run.
    told = []
    with pytest.raises(Terminated if signum == signal.SIGTERM else KeyboardInterrupt), sigterm_raises():
        with signals_held():
            os.kill(os.getpid(), signum)
            time.sleep(0.2)  # the study told, one write after another
            told.append("told")
    assert told == ["told"]


def test_a_late_or_stopped_trial_is_told_as_its_run_ended_and_its_worker_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the result came after the sweeper's check and the other worker's FAIL before Optuna's
    # tell; study.optimize met that with "ValueError: Cannot tell a FAIL trial." and its own
    # "AssertionError: Should not reach.", the worker ended with a traceback and the sweep with exit
    # code 3 (seen in the rerun of a sweep whose process was SIGKILLed, heartbeats late on a busy machine).
    from hydra_plugins.experiments_sweeper.optuna_sweeper import OptunaSweeper
    from hydra_plugins.experiments_sweeper.study import retry_callback

    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    class LateResult(OptunaSweeper):
        def _objective(self, study: optuna.Study, trial: optuna.Trial, *args: object, **kwargs: object) -> float:
            # Another worker of the study, with its own connection, fails the trial as stale and
            # queues its parameters again (what optuna.storages.fail_stale_trials does).
            other = optuna.load_study(study_name="late", storage=url)
            other._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
            retry_callback(2)(other, other.trials[trial.number])
            return 0.5  # the trial's result, come too late

    sweeper = LateResult("late", url, "minimize", 1, 1, None, None, heartbeat_interval=1, grace_period=1)
    study = sweeper._open_study(sweeper._storage(url))
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(0.01, 0.1)}
    sweeper._trial(study, space, [], tmp_path, None)  # no error: the worker goes on with the next trial
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert "trial 0 was declared stale while it ran (heartbeat later than 1 s); its result is dropped" in caplog.text

    # Ctrl-C or SIGTERM as a worker tells Optuna a run that recorded its ending: told as it ended
    # (before: failed and queued again, and the next sweep of the study removed the completed run).
    ran, stopped = study.ask(), study.ask()
    (tmp_path / str(ran.number)).mkdir()
    (tmp_path / str(ran.number) / "metrics.json").write_text(json.dumps({"status": "completed", "best": 0.25}))
    sweeper._requeue(study, ran.number, tmp_path)
    sweeper._requeue(study, stopped.number, tmp_path)  # no ending recorded: queued again
    assert [(t.state.name, t.value) for t in study.trials[1:]] == [
        ("COMPLETE", 0.25),
        ("FAIL", None),
        ("WAITING", None),
    ]


def test_a_damaged_sweep_folder_is_summarised_row_by_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.summarize import main as summarize_main

    sweep = tmp_path / "received"
    files = {
        # escape sequences in an override and an error; a completed trial whose override is a
        # shell command; a metrics.json that is a list; overrides with a Python tag, and binary;
        # a failed trial's history in Latin-1
        "0": ['- "seed=\\e[2J\\e]0;owned\\a"\n', {"status": "failed", "error": "\x1b[31mred\x1b[0m\nsecond"}],
        "1": ["- experiment=xor\n- 'seed=0;touch PWNED'\n", {"status": "completed", "best": 0.1, "test": []}],
        "2": ["- seed=2\n", []],
        "3": [f"- !!python/object/apply:os.system ['touch {tmp_path}/PWNED']\n", {"status": "completed", "best": 0.2}],
        "4": [b"\x89\xff\x00 not text", {"status": "completed", "best": 0.3}],
        "5": ["- seed=5\n", {"status": "failed", "error": "x"}],
    }
    for name, (overrides, metrics) in files.items():
        (sweep / name / ".hydra").mkdir(parents=True)
        path = sweep / name / ".hydra" / "overrides.yaml"
        path.write_bytes(overrides) if isinstance(overrides, bytes) else path.write_text(overrides)
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    (sweep / "5" / "history.csv").write_bytes(b"epoch,seconds\n1,0.5\xe9\n")
    with pytest.raises(SystemExit) as ended:
        summarize_main([str(sweep)])
    out, err = capsys.readouterr()
    assert ended.value.code == 3
    assert err.splitlines() == [
        f"error: 5 of 6 trials did not complete (2 failed, 3 damaged); see {sweep / 'summary.md'}"
    ]
    assert "\x1b" not in out and "\x07" not in out and not (tmp_path / "PWNED").exists()
    assert out == (sweep / "summary.md").read_text()
    table = [line for line in out.splitlines()[2:] if line.startswith("|")]
    assert len(table) == 2 + 6
    rows = {r["run"]: r for r in csv.DictReader(open(sweep / "summary.csv", newline=""))}
    assert rows["0"]["overrides"] == "seed=" and rows["0"]["error"] == "red / second"
    assert rows["2"]["status"] == rows["3"]["status"] == rows["4"]["status"] == "damaged"
    assert rows["2"]["error"] == "metrics.json is damaged (not a JSON object)"
    assert rows["3"]["error"].startswith("cannot read .hydra/overrides.yaml: could not determine a constructor")
    assert rows["4"]["error"].startswith("cannot read .hydra/overrides.yaml: ")
    # The winner's command, pasted into a shell, runs one command: every override quoted.
    assert (
        OmegaConf.load(sweep / "best.yaml").command == "python -m experiments.train experiment=xor 'seed=0;touch PWNED'"
    )

    # A folder where nothing completed keeps a best.yaml and an objective.png that summarize did not write.
    mine = tmp_path / "mine"
    (mine / "0" / ".hydra").mkdir(parents=True)
    (mine / "0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (mine / "0" / "metrics.json").write_text('{"status": "failed", "error": "x"}')
    (mine / "best.yaml").write_text("my notes\n")
    (mine / "objective.png").write_bytes(b"\x89PNG my figure")
    with pytest.raises(SystemExit):
        summarize_main([str(mine)])
    assert (mine / "best.yaml").read_text() == "my notes\n"
    assert (mine / "objective.png").read_bytes() == b"\x89PNG my figure"


def test_a_sweep_folder_of_pipes_devices_and_links_is_read_and_written_as_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a named pipe as a trial's metrics.json hung summarize for ever, a link to /dev/zero
    # read without end, an objective.png linking elsewhere had the figure written through it, and
    # an override holding "$\\foo{$" stopped the figure with a mathtext traceback.
    from experiments.summarize import main as summarize_main

    sweep, victim = tmp_path / "received", tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name, overrides in (("0", "- seed=0\n- +tag=$\\foo{$\n"), ("1", "- seed=1\n- +tag=b\n"), ("2", "- seed=2\n")):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "overrides.yaml").write_text(overrides)
        (sweep / name / "metrics.json").write_text(json.dumps({"status": "completed", "best": 0.5 + int(name)}))
    (sweep / "1" / "config.yaml").symlink_to("/dev/zero")
    (sweep / "1" / "history.csv").symlink_to("/dev/zero")
    (sweep / "2" / "metrics.json").unlink()
    os.mkfifo(sweep / "2" / "metrics.json")
    os.mkfifo(sweep / "multirun.yaml")
    (sweep / "objective.png").symlink_to(victim)
    with pytest.raises(SystemExit) as ended:
        summarize_main([str(sweep)])
    assert ended.value.code == 3
    assert capsys.readouterr().err.splitlines() == [
        f"error: 1 of 3 trials did not complete (1 damaged); see {sweep / 'summary.md'}"
    ]
    assert victim.read_text() == "precious\n"
    assert not (sweep / "objective.png").is_symlink() and (sweep / "objective.png").read_bytes()[:4] == b"\x89PNG"
    rows = {r["run"]: r for r in csv.DictReader(open(sweep / "summary.csv", newline=""))}
    assert rows["2"]["error"] == "metrics.json is damaged (not a JSON object)"
    # A sweep still running in the folder: one line, nothing written (before: summary files in the
    # live folder, its running trials called incomplete, exit 3).
    from hydra_plugins.experiments_launcher.sweep_folder import SweepLock

    before = {p: p.stat().st_mtime_ns for p in sweep.iterdir() if p.is_file()}
    live = SweepLock(sweep).acquire()
    try:
        with pytest.raises(SystemExit) as ended:
            summarize_main([str(sweep)])
    finally:
        live.release()
    assert ended.value.code == 2 and capsys.readouterr().err.startswith(
        f"error: {sweep} is in use by the sweep of process"
    )
    assert {p: p.stat().st_mtime_ns for p in sweep.iterdir() if p.is_file() and p.name != ".lock"} == before
    # A summary that cannot be written is one line, not a traceback.
    (sweep / "summary.md").unlink()
    (sweep / "summary.md").mkdir()
    with pytest.raises(SystemExit) as ended:
        summarize_main([str(sweep)])
    assert ended.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot use {sweep / 'summary.md'}: Is a directory; check that the path exists and is writable "
        "(for the run directory: hydra.run.dir=<writable folder>)"
    ]
