"""One Optuna study shared by sweeps on several "machines", against a real PostgreSQL server; and
a sweep whose database is stopped under it.

The server's URL comes from ``EXPERIMENTS_TEST_POSTGRES`` (``.ci/run`` starts one on 127.0.0.1 with
``.ci/postgres.sh``). Every test gets a new, empty database on it, so that the schema is created
by the sweeps themselves. Two sweep processes with their own sweep folders stand in for two
machines: they share nothing but the database. The test that stops its database starts a server
of its own the same way.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import REPO

QUIET = ["callbacks.history.verbose=false", "logger=none"]


def _server_url() -> str:
    url = os.environ.get("EXPERIMENTS_TEST_POSTGRES")
    if url:
        return url
    reason = (
        "no PostgreSQL server: set EXPERIMENTS_TEST_POSTGRES=postgresql://user@127.0.0.1:port/db "
        "(`source .ci/postgres.sh` starts one, as .ci/run does)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run these tests")
    pytest.skip(reason)


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a new, empty database on the test server; dropped afterwards."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is in the test extra: pip install -e '.[test]'")
    from sqlalchemy.engine import make_url

    server = make_url(_server_url())
    name = f"sweep_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(
        host=server.host,
        port=server.port,
        user=server.username,
        password=server.password,
        dbname=server.database,
        autocommit=True,
    )
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _sweep(sweep: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        "experiment=xor",
        "hparams_search=xor_tpe",
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.n_jobs=1",
        *QUIET,
        f"hydra.sweep.dir={sweep}",
        *extra,
    ]


def _retry() -> type:
    return (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )


@pytest.mark.slow  # two sweeps of 6 trials, one killed: about a minute
def test_two_machines_share_one_study_and_a_killed_workers_trial_is_retried_by_the_other(
    database: str, tmp_path: Path
) -> None:
    n_trials, heartbeat, grace = 6, 1, 4
    # Trials of a few seconds (no pruning), so that one can be killed in the middle.
    extra = [
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.heartbeat_interval={heartbeat}",
        f"hydra.sweeper.grace_period={grace}",
        "hydra.sweeper.pruner.n_startup_trials=100",
        "trainer.max_epochs=40",
    ]
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    # Both start at once on an empty database: both create its schema and the study.
    a = subprocess.Popen(
        _sweep(machine_a, database, *extra),
        cwd=tmp_path,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    b = subprocess.Popen(
        _sweep(machine_b, database, *extra),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        killed_at = None
        while time.monotonic() < deadline and a.poll() is None:
            in_flight = [d for d in machine_a.glob("*/config.yaml") if not (d.parent / "metrics.json").exists()]
            if in_flight:
                time.sleep(0.5)  # well inside the trial
                os.killpg(a.pid, signal.SIGKILL)
                killed_at = time.time()
                break
            time.sleep(0.1)
        a.wait(timeout=30)
        assert killed_at is not None, f"machine a never ran a trial: {a.stderr.read()[-3000:]}"
        _, err = b.communicate(timeout=300)
        assert b.returncode == 0, err[-3000:]
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.kill()

    study = optuna.load_study(study_name="shared", storage=database)
    trials = study.trials
    retry = _retry()
    # (a trial that two workers asked for at the same moment as the last one is not run: "surplus")
    trials = [t for t in trials if not t.user_attrs.get("fail_reason", "").startswith("surplus")]
    [killed] = [t for t in trials if t.state.name == "FAIL"]
    # Optuna's heartbeat failed the killed trial, and the other machine ran it again, soon after
    # the grace period ran out (it looks for stale trials before each trial and while it waits).
    [again] = [t for t in trials if retry.retried_trial_number(t) == killed.number]
    assert again.state.name == "COMPLETE" and killed.params.items() <= again.params.items()
    started = again.datetime_start.timestamp()
    assert killed_at + grace - heartbeat - 1 <= started <= killed_at + grace + 20, started - killed_at
    assert (machine_b / str(again.number) / "metrics.json").is_file()

    # Exactly n_trials finished, each run once, on one machine or the other.
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == n_trials and len(trials) == n_trials + 1
    runs = {m.name: {d.name for d in m.iterdir() if (d / "metrics.json").is_file()} for m in (machine_a, machine_b)}
    assert not runs["a"] & runs["b"]
    assert runs["a"] | runs["b"] == {str(t.number) for t in finished}

    # Machine a, back: the same command has nothing left to run, and drops its half-run trial.
    assert (machine_a / str(killed.number)).is_dir()
    again_a = subprocess.run(
        _sweep(machine_a, database, *extra), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert again_a.returncode == 0, again_a.stderr[-3000:]
    assert len(optuna.load_study(study_name="shared", storage=database).trials) == len(study.trials)
    assert not (machine_a / str(killed.number)).exists()


def _open_study_at_once(url: str, barrier: Any, results: Any) -> None:
    from hydra_plugins.experiments_sweeper.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(
        "new_study",
        url,
        "min",
        4,
        1,
        {"_target_": "optuna.samplers.RandomSampler"},
        {"_target_": "optuna.pruners.NopPruner"},
    )
    try:
        barrier.wait(timeout=60)
        study = sweeper._open_study(sweeper._storage(url))
        results.put(("ok", study.study_name))
    except BaseException as err:  # noqa: BLE001 - reported to the test
        results.put(("error", f"{type(err).__name__}: {err}"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sweeps_creating_the_same_new_study_at_once_all_get_it(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else request.getfixturevalue("database")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_open_study_at_once, args=(url, barrier, results)) for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert outcomes == [("ok", "new_study")] * 4, outcomes
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["new_study"]


@pytest.mark.slow  # two 2-trial sweeps at once: about 30 s
def test_no_password_reaches_a_file_of_the_sweeps_or_a_line_they_print(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password in the storage URL as users write it: in its userinfo on the command line, or
    as ?password= in an environment variable that the command names (${oc.env:...}). Neither
    multirun.yaml, a trial's .hydra/ files or lock holder record, nor any printed line holds it;
    and a URL without one works with the password in libpq's environment (PGPASSWORD)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from experiments.sweeps import open_storage

    url = make_url(database)
    role, password = f"sweeper_{uuid.uuid4().hex[:8]}", f"pw_{uuid.uuid4().hex}"
    admin = psycopg.connect(
        host=url.host,
        port=url.port,
        user=make_url(_server_url()).username,
        dbname=make_url(_server_url()).database,
        autocommit=True,
    )
    try:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"ALTER DATABASE {url.database} OWNER TO {role}")
        own = url.set(username=role, password=password)
        forms = {
            "userinfo": own.render_as_string(hide_password=False),
            "query": "'${oc.env:PG_URL}'",  # quoted: Hydra reads the resolved override again, and "=" needs it
        }
        env = {**_env(), "PG_URL": own.set(password=None).update_query_dict({"password": password}).render_as_string()}
        env.pop("PGPASSFILE", None)
        sweeps = {
            form: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "experiments.train",
                    "-m",
                    "experiment=xor",
                    "hparams_search=xor_tpe",
                    f"hydra.sweeper.study_name={form}",
                    f"hydra.sweeper.storage={storage}",
                    "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.n_jobs=1",
                    "trainer.max_epochs=3",
                    *QUIET,
                    f"hydra.sweep.dir={tmp_path / form}",
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for form, storage in forms.items()
        }
        printed = {form: process.communicate(timeout=300) for form, process in sweeps.items()}
        for form, process in sweeps.items():
            assert process.returncode == 0, printed[form][1][-3000:]
            assert password not in "".join(printed[form]), form
            assert (tmp_path / form / "multirun.yaml").is_file() and (tmp_path / form / "0" / ".hydra").is_dir()
        holding = [str(p) for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
        assert holding == []
        assert "***@" in (tmp_path / "userinfo" / "multirun.yaml").read_text()
        # The same study through a URL without the password: libpq takes it from PGPASSWORD.
        monkeypatch.delenv("PGPASSFILE", raising=False)
        monkeypatch.setenv("PGPASSWORD", password)
        plain = own.set(password=None).render_as_string(hide_password=False)
        assert len(optuna.load_study(study_name="userinfo", storage=open_storage(plain)).trials) == 2
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


@pytest.fixture
def own_server() -> Iterator[tuple[str, Callable[[str], None], dict[str, str]]]:
    """A PostgreSQL server of this test's own, started as ``.ci/postgres.sh`` starts the test server
    (the shared one must not be stopped): its URL, ``control("stop")`` / ``control("start")``, and
    the environment its clients need."""
    _server_url()  # skipped (or failed, in CI) without a test server, as the other tests
    script = REPO / ".ci" / "postgres.sh"
    shown = subprocess.run(
        [
            "bash",
            "-c",
            f'source "{script}" >/dev/null && printf "%s\\n" "$EXPERIMENTS_TEST_POSTGRES" "$pg_data" "$pg_bin" "${{PGPASSFILE:-}}"',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    url, data, binaries, passfile = (shown.stdout.splitlines() + [""] * 4)[:4]
    from sqlalchemy.engine import make_url

    port = make_url(url).port
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def control(action: str) -> None:
        options = (
            ["-o", f"-h 127.0.0.1 -p {port} -k {data} -c max_connections=200"] if action == "start" else ["-m", "fast"]
        )
        done = subprocess.run(
            [*as_postgres, f"{binaries}/pg_ctl", "-D", data, "-l", f"{data}/server.log", "-w", *options, action],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        yield url, control, ({"PGPASSFILE": passfile} if passfile else {})
    finally:
        subprocess.run(
            [*as_postgres, f"{binaries}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(data, ignore_errors=True)
        if passfile:
            Path(passfile).unlink(missing_ok=True)


def test_a_database_stopped_mid_sweep_is_one_line_and_the_same_command_continues_the_study(
    own_server: tuple[str, Callable[[str], None], dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: 646 lines of stderr with 15 tracebacks, the trials blamed on "invalid data in the
    # commit", exit code 1 and no summary.
    url, control, extra_env = own_server
    for name, value in extra_env.items():  # this process reads the study too
        monkeypatch.setenv(name, value)
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        "experiment=xor",
        "hparams_search=xor_tpe",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=2",
        "trainer.max_epochs=150",
        *QUIET,
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**_env(), **extra_env}
    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(sweep.glob("*/.lock.holder.json")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.1)
        time.sleep(1)  # well inside a trial
        control("stop")
        out, err = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    assert first.returncode == 3, err[-3000:]
    assert "Traceback" not in out + err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: the study's database ({url}) failed: "), line
    assert "run the same command again once the database is back (the study continues)" in line
    stopped = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert stopped and all(m["status"] == "failed" for m in stopped)
    assert all(m["error"].startswith("the study's database failed: ") for m in stopped)
    assert (sweep / "summary.md").is_file()

    # The database back, the same command continues the study: the trials it stopped run again.
    control("start")
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="xor_tpe", storage=url).trials
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    assert {p.parent.name for p in sweep.glob("*/metrics.json")} == {
        str(t.number) for t in trials if t.state.name in ("COMPLETE", "PRUNED")
    }
