"""Sweeps from the command line, as a user runs them: grid, TPE with resume after a kill, failures, pruning."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from experiments.summarize import main as summarize_main

from conftest import REPO, StartedCli, run_cli, selected
from reliability_helpers import call_cli

QUIET = ["callbacks.history.verbose=false", "logger=none"]


def _rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _study(sweep: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}")


PRUNER_EPOCHS = 12


@pytest.fixture(scope="module")
def sweeps(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, StartedCli]]]:
    """Four independent multiruns from the command line, each in its own folder, started together
    (the machine's cores; the Optuna ones run their trials one at a time) and each waited for and
    checked by its own test: a grid over seeds, a sweep with a raising and a diverging trial, a
    pruned Optuna study, and an Optuna study whose every trial fails."""
    root = tmp_path_factory.mktemp("sweeps")
    grid, failures, pruning, refused = root / "grid", root / "failures", root / "pruning", root / "refused"
    pruning.mkdir()
    # The study exists before the sweep (as a resumed one would): two sane trials, then lr=1000.
    study = optuna.create_study(study_name="prune", storage=f"sqlite:///{pruning / 'optuna.db'}")
    for lr in ("0.05", "0.05", "1000"):
        study.enqueue_trial({"optimizer.lr": lr})
    commands = {
        "grid": (
            "test_grid_sweep_over_seeds_summarises_with_mean_and_std_and_shares_one_tensorboard_root",
            grid,
            [
                "seed=0,1",
                "trainer.max_epochs=5",
                "callbacks.history.verbose=false",
            ],
        ),
        # lr=-1 raises when the optimizer is built; lr=1e38 overflows float32 to NaN within two epochs.
        "failures": (
            "test_sweep_goes_on_past_a_raising_and_a_diverging_trial",
            failures,
            [
                "optimizer=sgd",
                "optimizer.lr=1e38,-1,0.5",
                "trainer.max_epochs=6",
                *QUIET,
            ],
        ),
        "pruning": (
            "test_median_pruner_stops_an_absurd_learning_rate_early",
            pruning,
            [
                "hydra/sweeper=optuna",
                "hydra.sweeper.study_name=prune",
                "hydra.sweeper.n_trials=3",
                "hydra.sweeper.pruner.n_startup_trials=2",
                "hydra.sweeper.pruner.n_warmup_steps=2",
                "optimizer.lr=choice(0.05,1000)",
                f"trainer.max_epochs={PRUNER_EPOCHS}",
                *QUIET,
            ],
        ),
        # Every trial refused by the config's checks (a dropout is a probability).
        "refused": (
            "test_optuna_sweep_whose_every_trial_failed_exits_3_with_its_summary",
            refused,
            [
                "hparams_search=xor_tpe",
                "hydra.sweeper.n_trials=2",
                "hydra.sweeper.n_jobs=1",
                "model.dropout=1.5",
                *QUIET,
            ],
        ),
    }
    runs = {  # each started only when its test runs
        name: (sweep, StartedCli("train", "-m", "experiment=xor", *args, f"hydra.sweep.dir={sweep}", cwd=root))
        for name, (test, sweep, args) in commands.items()
        if selected(request, test)
    }
    yield runs
    for _, started in runs.values():
        started.wait()


def test_grid_sweep_over_seeds_summarises_with_mean_and_std_and_shares_one_tensorboard_root(sweeps) -> None:
    sweep, started = sweeps["grid"]
    result = started.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(sweep)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    best = [float(r["best val/loss"]) for r in rows]
    assert best == sorted(best)
    assert {r["overrides"] for r in rows} == {
        f"experiment=xor seed={s} trainer.max_epochs=5 callbacks.history.verbose=False" for s in (0, 1)
    }
    assert all(r["epochs"] == "5" and float(r["seconds"]) > 0 for r in rows)
    # Both trials ran at once, in two forked workers of one thread each (the parallel launcher).
    for job in ("0", "1"):
        assert OmegaConf.load(sweep / job / ".hydra" / "hydra.yaml").hydra.launcher.n_jobs == min(
            2, len(os.sched_getaffinity(0))
        )
        assert OmegaConf.load(sweep / job / "config.yaml").trainer.num_threads == 1
    md = (sweep / "summary.md").read_text()
    mean = sum(best) / 2
    assert f"{mean:.4g} ± " in md.split("mean ± std")[1]
    # The grid's picture: the objective per setting, mean ± std over the seeds, linked from summary.md.
    assert (sweep / "objective.png").stat().st_size > 5000 and "![" in md and "(objective.png)" in md
    winner = OmegaConf.load(sweep / "best.yaml")
    assert winner.command == f"python -m experiments.train {rows[0]['overrides']}"
    assert winner.best == pytest.approx(best[0])

    # The summary is rebuilt from the run directories alone.
    before = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    summarize_main([str(sweep)])
    assert (sweep / "summary.csv").read_text() == before

    # One log root: every run's HPARAMS entry (seed, best val/loss and test metrics) under the sweep dir.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep))
    mux.Reload()
    seeds = {}
    for run, tags in mux.PluginRunToTagToContent("hparams").items():
        start = plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"])
        seeds[run] = start.session_start_info.hparams["seed"].number_value
        logged = {tag: mux.Scalars(run, tag)[-1].value for tag in ("best/val_loss", "test/loss", "test/acc")}
        metrics = json.loads((sweep / Path(run).parent / "metrics.json").read_text())
        assert logged["best/val_loss"] == pytest.approx(metrics["best"])
        assert logged["test/acc"] == pytest.approx(metrics["test"]["test/acc"])
    assert sorted(seeds.values()) == [0, 1] and len(seeds) == 2


def test_sweep_goes_on_past_a_raising_and_a_diverging_trial(sweeps, tmp_path: Path) -> None:
    sweep, started = sweeps["failures"]  # optimizer.lr=1e38,-1,0.5 (see the fixture)
    result = started.wait()
    # Ran to its end with trials that failed: exit code 3, its summary and best.yaml written, one line.
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: 2 of 3 trials did not complete (2 failed); see {sweep / 'summary.md'}"
    )
    assert "Traceback" not in result.stderr
    assert OmegaConf.load(sweep / "best.yaml").run_dir == str(sweep / "2")  # lr=0.5
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed: ")]
    assert sorted(line.rsplit(" | ", 1)[1] for line in failed) == [str(sweep / "0"), str(sweep / "1")]
    rows = {r["overrides"].split("optimizer.lr=")[1].split()[0]: r for r in _rows(sweep)}
    assert rows["0.5"]["status"] == "completed" and float(rows["0.5"]["best val/loss"]) < 1
    assert rows["-1"]["status"] == "failed"
    assert "Invalid learning rate: -1" in rows["-1"]["error"]
    assert rows["1e+38"]["status"] == "failed"
    # the non-finite guard stops the run at the first NaN loss and names the remedy
    assert rows["1e+38"]["error"].startswith("loss became nan at step ")
    assert "lower optimizer.lr" in rows["1e+38"]["error"]
    assert [r["status"] for r in _rows(sweep)] == ["completed", "failed", "failed"]
    # A single run that fails still exits non-zero, with the reason on one line.
    # (in this process, exactly as the console script runs it: run_cli around the Hydra main)
    code, _, err = call_cli(
        "train",
        "experiment=xor",
        "optimizer=sgd",
        "optimizer.lr=1e38",
        "trainer.max_epochs=3",
        *QUIET,
        f"hydra.run.dir={tmp_path / 'single'}",
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: loss became nan at step ")


def test_median_pruner_stops_an_absurd_learning_rate_early(sweeps) -> None:
    # Waited for before the TPE test below, whose kill timing wants no other sweep of ours running.
    sweep, started = sweeps["pruning"]  # a study made before the sweep: lr 0.05, 0.05, then 1000
    epochs = PRUNER_EPOCHS
    result = started.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state.name for t in _study(sweep, "prune").trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = json.loads((sweep / "2" / "metrics.json").read_text())
    assert (sweep / "2" / "learning_curves.png").is_file()
    assert pruned["status"] == "pruned" and pruned["error"].startswith("pruned at epoch 3:")
    with open(sweep / "2" / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3 < epochs
    assert [r["status"] for r in _rows(sweep)] == ["completed", "completed", "pruned"]


def test_optuna_sweep_whose_every_trial_failed_exits_3_with_its_summary(sweeps) -> None:
    sweep, started = sweeps["refused"]  # model.dropout=1.5: every trial refused by the config's checks
    result = started.wait()
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: 2 of 2 trials did not complete (2 failed); see {sweep / 'summary.md'}"
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert [r["status"] for r in _rows(sweep)] == ["failed", "failed"]
    assert all("model.dropout" in r["error"] for r in _rows(sweep))
    assert [t.state.name for t in _study(sweep, "xor_tpe").trials] == ["FAIL", "FAIL"]
    assert not (sweep / "best.yaml").exists()  # nothing completed: no winner
    # summarize on its own says the same, with the same exit code.
    again = run_cli("summarize", str(sweep), cwd=sweep, timeout=60)
    assert again.returncode == 3 and again.stderr.strip().splitlines() == [
        f"error: 2 of 2 trials did not complete (2 failed); see {sweep / 'summary.md'}"
    ]


def _tpe_command(sweep: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        "experiment=xor",
        "hparams_search=xor_tpe",
        "trainer.max_epochs=5",
        *QUIET,
        f"hydra.sweep.dir={sweep}",
        *extra,
    ]


def test_tpe_search_killed_midway_resumes_with_the_same_command_and_runs_no_trial_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "tpe"
    # 12 trials, 2 worker processes (conf/hparams_search/xor_tpe.yaml); heartbeats every second, so
    # that the killed trials go stale 8 s after the kill (a live worker on a loaded machine can
    # miss a few seconds of heartbeats).
    command = _tpe_command(sweep, "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    env.pop("HYDRA_FULL_ERROR", None)
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    done_before: dict[str, str] = {}
    try:
        while time.monotonic() < deadline and first.poll() is None:
            finished = sorted(sweep.glob("*/metrics.json"))
            in_flight = [d for d in sweep.glob("*/config.yaml") if not (d.parent / "metrics.json").exists()]
            if len(finished) >= 4 and in_flight:  # kill it mid-trial
                done_before = {str(p.parent.name): p.read_text() for p in finished}
                break
            time.sleep(0.2)
    finally:
        workers = [
            int(pid)
            for pid in subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()
        ]
        # The sweep's own process, mid-trial (its workers run in process groups of their own).
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    # Its workers died with it (PR_SET_PDEATHSIG): none runs on, none starts another trial.
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert 4 <= len(done_before) < 12
    interrupted = [t.number for t in _study(sweep, "xor_tpe").trials if t.state.name == "RUNNING"]
    assert interrupted

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]

    trials = _study(sweep, "xor_tpe").trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 12
    # Optuna's heartbeat failed the killed trials (and only they), and its retry callback ran
    # each one's parameters again as a new trial.
    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    assert sorted(t.number for t in trials if t.state.name == "FAIL") == sorted(interrupted)
    retries = {retry.retried_trial_number(t): t for t in finished if retry.retried_trial_number(t) is not None}
    assert sorted(retries) == sorted(interrupted)
    # (a trial killed while it was being asked for may have no parameters yet)
    assert all(trials[n].params.items() <= retries[n].params.items() for n in interrupted)
    # The trials finished before the kill were left as they were (a trial whose result was
    # written but not yet told to Optuna when it was killed counts as killed).
    for name, text in done_before.items():
        if int(name) not in interrupted:
            assert (sweep / name / "metrics.json").read_text() == text
    rows = _rows(sweep)
    assert len(rows) == 12 and {r["status"] for r in rows} <= {"completed", "pruned"}
    # Optuna's pictures of the study (three parameters: importances too), linked from summary.md.
    md = (sweep / "summary.md").read_text()
    for name in ("optuna_history.png", "optuna_importances.png", "optuna_parallel_coordinate.png"):
        assert (sweep / name).stat().st_size > 5000 and f"({name})" in md
    assert {r["run"] for r in rows} == {str(t.number) for t in finished}
    # Finished: the same command again has nothing left to run.
    # (in this process, as the console script runs it: run_cli around the Hydra main)
    monkeypatch.chdir(tmp_path)
    code, _, err = call_cli("train", *command[3:])
    assert code == 0, err[-3000:]
    assert len(_study(sweep, "xor_tpe").trials) == len(trials)


@pytest.mark.parametrize(
    ("search", "sampler"),
    [
        ("xor_tpe", optuna.samplers.TPESampler),
        ("xor_random", optuna.samplers.RandomSampler),
        ("mnist_tpe", optuna.samplers.TPESampler),
    ],
)
def test_search_configs_compose_into_a_sampler_a_stable_sweep_dir_and_a_search_space(
    search: str, sampler: type
) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from experiments.config import CONFIG_DIR

    experiment = "mnist_mlp" if search.startswith("mnist") else "xor"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment={experiment}", f"hparams_search={search}"], return_hydra_config=True
        )
    sweeper = cfg.hydra.sweeper
    assert isinstance(instantiate(sweeper.sampler), sampler)
    assert isinstance(instantiate(sweeper.pruner), optuna.pruners.MedianPruner)
    # Derived from the study name, not the time: the same command finds the same study again.
    assert cfg.hydra.sweep.dir == f"outputs/{experiment}/sweeps/{sweeper.study_name}"
    assert "optimizer.lr" in sweeper.params


def test_summarize_names_a_folder_that_is_not_a_sweep(tmp_path: Path) -> None:
    result = run_cli("summarize", str(tmp_path / "nowhere"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: sweep directory not found: {tmp_path / 'nowhere'}; pass the folder of a multirun"
    )
    empty = run_cli("summarize", str(tmp_path), cwd=tmp_path, timeout=60)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no run directories in ")
    assert not (tmp_path / "summary.csv").exists()


def test_a_storage_url_that_is_no_url_is_one_line_without_its_password(tmp_path: Path) -> None:
    sweep = tmp_path / "nothing"
    url = "postgresql+psycopg://postgres:Hunter2Secret@127.0.0.1:notaport/nodb"
    code, out, err = call_cli(
        "train",
        "-m",
        "experiment=xor",
        "hparams_search=xor_tpe",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: hydra.sweeper.storage=postgresql+psycopg://postgres:***@127.0.0.1:notaport/nodb: not a database URL "
        "(invalid literal for int() with base 10: 'notaport'); e.g. postgresql+psycopg://user@host:5432/database with the password in PGPASSWORD or ~/.pgpass"
    ]
    assert "Hunter2Secret" not in out + err and not sweep.exists()


def test_optuna_sweeper_without_a_search_space_says_so_and_writes_nothing(tmp_path: Path) -> None:
    sweep = tmp_path / "nothing"
    # In this process, exactly as the console script runs it (run_cli around the Hydra main).
    code, _, err = call_cli("train", "-m", "experiment=xor", "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep}")
    assert code == 2
    assert err.startswith("error: the optuna sweeper has nothing to search")
    assert not sweep.exists()


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        # Optuna's own check of a distribution was a 35-line traceback
        ("optimizer.lr=interval(1,0.1)", "optimizer.lr=interval(1,0.1): `low <= high` must hold"),
        ("optimizer.lr=tag(log,interval(0,0.1))", "`low > 0` must hold for `log=True`"),
        # the sweeper's own counts, which once reached Optuna or a division as they were
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 must be an integer >= 1"),
        ("hydra.sweeper.n_jobs=many", "hydra.sweeper.n_jobs='many' must be an integer >= 1"),
        ("hydra.sweeper.heartbeat_interval=0", "hydra.sweeper.heartbeat_interval=0 must be an integer >= 1"),
        ("hydra.sweeper.grace_period=-5", "hydra.sweeper.grace_period=-5 must be an integer >= 1"),
    ],
)
def test_optuna_sweeper_settings_out_of_range_are_one_line_and_write_nothing(
    tmp_path: Path, setting: str, words: str
) -> None:
    sweep = tmp_path / "refused"
    space = [] if setting.startswith("optimizer.lr=") else ["optimizer.lr=interval(0.01,0.1)"]
    code, _, err = call_cli(
        "train", "-m", "experiment=xor", "hydra/sweeper=optuna", *space, setting, f"hydra.sweep.dir={sweep}"
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert not sweep.exists()


@pytest.mark.parametrize(
    ("primary", "jobs", "kind"),
    [
        ([], [["seed=0"], ["seed=1"], ["seed=2"]], "cpu"),
        (["trainer=gpu"], [["seed=0"], ["seed=1"]], "gpu"),
        ([], [["trainer=gpu", "seed=0"], ["trainer=gpu", "seed=1"]], "gpu"),
        (["trainer=ddp_cpu"], [["seed=0"], ["seed=1"]], "many"),
        ([], [["trainer=cpu"], ["trainer=gpu"]], "many"),
        ([], [["trainer.devices=1"], ["trainer.devices=2"]], "many"),
        ([], [["trainer.accelerator=auto"]], "gpu"),
    ],
)
def test_parallel_launcher_reads_what_each_job_trains_on(
    primary: list[str], jobs: list[list[str]], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each job's trainer as Hydra composes it (a trainer group, an experiment, a key): one CPU
    # device, one GPU, or anything else (several devices, DDP, a mix).
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import HydraContext, RunMode

    from experiments.config import CONFIG_DIR
    from hydra_plugins.experiments_launcher import parallel_launcher

    monkeypatch.setattr(parallel_launcher, "_visible_gpus", lambda: ["0"])  # as on a machine with one GPU
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    launcher = parallel_launcher.ParallelLauncher()
    launcher.config = loader.load_configuration("train", ["experiment=xor", *primary], run_mode=RunMode.MULTIRUN)
    launcher.hydra_context = HydraContext(config_loader=loader, callbacks=None)  # type: ignore[arg-type]
    assert launcher.devices_of([["experiment=xor", *primary, *job] for job in jobs]) == kind
    with pytest.raises(ValueError, match="n_jobs must be auto or a positive integer"):
        parallel_launcher.ParallelLauncher(n_jobs=0)
    with pytest.raises(ValueError, match="jobs_per_gpu must be a positive integer"):
        parallel_launcher.ParallelLauncher(jobs_per_gpu=0)
