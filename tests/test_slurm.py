"""Sweeps and runs on a real SLURM cluster (``hydra/launcher=slurm``, sbatch, srun), as a user runs them.

The cluster comes from ``.ci/slurm.sh`` (``.ci/run`` sources it: Debian's slurm-wlm with accounting,
one node, a requeued job eligible again after 11 s); ``EXPERIMENTS_TEST_SLURM=1`` says it is there.
Without it these tests skip, and fail under ``CI=true``. Every job is started at once by one fixture
(they are independent), and threads act on them while they run (requeue, SIGTERM, Ctrl-C), so that
their waits overlap; each test then checks its own. The runs that must end exactly as an
uninterrupted one sleep at each epoch's end in their job's first start (reliability_helpers.
SleepInFirstSlurmStart), so that they last until they are requeued or reach their time limit
without keeping a core busy, and are compared with one uninterrupted run of the same command.
"""

from __future__ import annotations

import json
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
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from experiments.runs import read_history

from reliability_helpers import call_cli, child_env

QUIET = ["logger=none", "callbacks.history.verbose=false"]
# One small CPU job each: the cluster's node is the CI machine.
SMALL = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
# The command that ends exactly as an uninterrupted run however often it is stopped and continued:
# XOR, last.ckpt every 20 steps; in a job's first start 0.2 s of sleep per epoch (80 s in all:
# longer than a 1-minute time limit), none after a requeue or outside SLURM (8 s of fitting).
EXACT = [
    "experiment=xor",
    *QUIET,
    "trainer.max_epochs=400",
    "checkpoint_every_n_steps=20",
    "+callbacks.sleep._target_=reliability_helpers.SleepInFirstSlurmStart",
    "+callbacks.sleep.seconds=0.2",
]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}


def _cluster() -> None:
    if os.environ.get("EXPERIMENTS_TEST_SLURM"):
        return
    reason = (
        "no SLURM cluster: set EXPERIMENTS_TEST_SLURM=1 where sbatch, squeue and sacct reach one "
        "(`source .ci/slurm.sh` starts one, as .ci/run does)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run these tests")
    pytest.skip(reason)


class Started:
    """A command started in the background, its output in files, Ctrl-C taken as from a terminal."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=child_env(OMP_NUM_THREADS="1"),
            stdout=self.out,
            stderr=self.err,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.result: subprocess.CompletedProcess[str] | None = None

    def wait(self, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        if self.result is None:
            try:
                self.process.wait(timeout=timeout)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
            self.out.seek(0)
            self.err.seek(0)
            self.result = subprocess.CompletedProcess(
                self.process.args, self.process.returncode, self.out.read(), self.err.read()
            )
        return self.result


def _train(*args: str, cwd: Path) -> Started:
    return Started([sys.executable, "-m", "experiments.train", *args], cwd)


class When(threading.Thread):
    """Runs ``action`` once ``ready()`` is true (asked every 0.1 s, for at most ``timeout`` s), while
    the test waits for other jobs; ``join()`` re-raises what went wrong."""

    def __init__(self, ready: Callable[[], Any], action: Callable[[], Any], timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.ready, self.action, self.timeout = ready, action, timeout
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while not self.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError("never ready")
                time.sleep(0.1)
            self.action()
        except BaseException as err:  # noqa: BLE001 - re-raised by join()
            self.error = err

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def _job_ids(sweep: Path) -> list[str]:
    """The SLURM ids of a sweep's jobs (``<array>_<i>``, or ``<id>`` for a sweep of one), from submitit's folders."""
    folder = sweep / ".submitit"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    tasks = [name for name in names if "_" in name]  # an array also has a folder of its own
    return tasks or names


def _sacct(job: str) -> list[tuple[str, str, str]]:
    """Every execution of ``job`` (a requeued job has one line per start): id, state, exit code."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-D", "-X", "-j", job, "-o", "JobID,State,ExitCode"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]  # type: ignore[misc]


def _slurm(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def _metrics(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Everything this module runs on the cluster, started together; the threads that requeue,
    signal and interrupt it started with it."""
    _cluster()
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra: pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("slurm")
    runs: dict[str, Any] = {"root": root}
    # The uninterrupted run that the continued ones must match, on this machine.
    runs["reference"] = root / "reference"
    runs["reference_run"] = _train(*EXACT, "optimizer.lr=0.05", f"hydra.run.dir={runs['reference']}", cwd=root)

    # A trial longer than its time limit (SLURM signals it 25 to 55 s after each start), and one
    # that fails.
    limit = root / "limit"
    runs["limit"] = (
        limit,
        _train(
            "-m",
            *EXACT,
            "optimizer.lr=0.05,-1",
            *SMALL,
            "hydra.launcher.timeout_min=1",
            "hydra.launcher.signal_delay_s=5",
            f"hydra.sweep.dir={limit}",
            cwd=root,
        ),
    )

    # A plain sbatch script whose job is requeued once it has a checkpoint (as a preemption does).
    plain = root / "plain"
    plain.mkdir()
    script = plain / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --requeue --open-mode=append --cpus-per-task=1 --mem=1G --job-name=plain\n"
        f"#SBATCH --output={plain}/job.out --error={plain}/job.err\n"
        f"srun {sys.executable} -m experiments.train {' '.join(EXACT)} optimizer.lr=0.05 "
        f"hydra.run.dir={plain / 'run'}\n"
    )
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script)], cwd=root, env=child_env(), capture_output=True, text=True, check=True
    )
    job = submitted.stdout.strip().split(";")[0]
    first_segment: dict[str, Any] = {}

    def capture_first_segment() -> None:
        # Its SIGTERM recorded, before the job starts again (11 s later): what the first segment left.
        run_dir = plain / "run"
        first_segment["metrics"] = _metrics(run_dir)
        first_segment["history"] = read_history(run_dir)
        shutil.copy(run_dir / "checkpoints" / "last.ckpt", plain / "segment1-last.ckpt")

    runs["plain"] = {
        "dir": plain,
        "job": job,
        "first_segment": first_segment,
        "requeue": When(
            lambda: (plain / "run" / "checkpoints" / "last.ckpt").is_file(),
            lambda: (time.sleep(2), _slurm("scontrol", "requeue", job)),
        ),
        "captured": When(lambda: _metrics(plain / "run").get("status") == "interrupted", capture_first_segment),
    }

    # A 3-seed sweep whose trial 0 is requeued (and continues), and trial 2 gets SIGTERM for good.
    seeds = root / "seeds"
    runs["seeds"] = (
        seeds,
        _train(
            "-m",
            "experiment=xor",
            "seed=0,1,2",
            "callbacks.history.verbose=false",
            "trainer.max_epochs=200",
            "checkpoint_every_n_steps=20",
            "+callbacks.sleep._target_=reliability_helpers.SleepInFirstSlurmStart",
            "+callbacks.sleep.seconds=0.1",
            *SMALL,
            f"hydra.sweep.dir={seeds}",
            cwd=root,
        ),
    )

    def trial_job(number: int) -> str:
        return next(j for j in _job_ids(seeds) if j.endswith(f"_{number}"))

    runs["seed_actions"] = [
        When(
            lambda: (seeds / "0" / "checkpoints" / "last.ckpt").is_file(),
            lambda: _slurm("scontrol", "requeue", trial_job(0)),
        ),
        When(
            lambda: (seeds / "2" / "checkpoints" / "last.ckpt").is_file(),
            lambda: _slurm("scancel", "--signal=TERM", trial_job(2)),
        ),
    ]

    # Two-process DDP trials through the launcher: one job of two tasks.
    ddp = root / "ddp"
    runs["ddp"] = (
        ddp,
        _train(
            "-m",
            "experiment=xor",
            *QUIET,
            "trainer=ddp_cpu",
            "trainer.max_epochs=20",
            *SMALL,
            "hydra.launcher.tasks_per_node=2",
            f"hydra.sweep.dir={ddp}",
            cwd=root,
        ),
    )

    # Ctrl-C of the submitting command once its jobs are on the cluster.
    interrupted = root / "interrupted"
    submitter = _train("-m", *EXACT, "seed=0,1", *SMALL, f"hydra.sweep.dir={interrupted}", cwd=root)

    def on_the_cluster() -> bool:
        ids = _job_ids(interrupted)
        return len(ids) == 2 and all(_sacct(j) for j in ids)

    runs["interrupted"] = (
        interrupted,
        submitter,
        When(on_the_cluster, lambda: submitter.process.send_signal(signal.SIGINT)),
    )
    yield runs
    # Whatever a failed test left running.
    for key in ("limit", "seeds", "ddp", "interrupted"):
        runs[key][1].wait(timeout=400)
    runs["reference_run"].wait(timeout=400)
    subprocess.run(["scancel", "--name=train", "--name=plain"], capture_output=True, timeout=60)


def test_a_three_seed_sweep_with_a_requeued_trial_and_one_stopped_for_good(cluster: dict[str, Any]) -> None:
    sweep, started = cluster["seeds"]
    for action in cluster["seed_actions"]:
        action.join(timeout=300)
    result = started.wait()
    _no_traceback(result.stdout, result.stderr)
    # The sweep ran to its end: the summary and best.yaml are written, exit code 3 and one line
    # for the trial that SIGTERM stopped (its job's submitit result never came).
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: 1 of 3 trials did not complete (1 interrupted); see {sweep / 'summary.md'}"
    ]
    job = _job_ids(sweep)[0].split("_")[0]
    assert f"slurm: submitted 3 trial(s) as job {job} " in result.stdout
    assert f"cancel with: scancel {job}" in result.stdout
    assert f"slurm: job {job}_2 (trial 2) ended FAILED; its run: interrupted | {sweep / '2'}" in result.stdout
    assert "summary: 2/3 runs completed" in result.stdout
    for trial in ("0", "1"):
        run_dir = sweep / trial
        names = {p.name for p in run_dir.iterdir()}
        assert {"config.yaml", "metrics.json", "history.csv", "learning_curves.png", "tensorboard", ".hydra"} <= names
        assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
        metrics = _metrics(run_dir)
        assert metrics["status"] == "completed" and metrics["epochs"] == 200
        assert metrics["restarts"] == (1 if trial == "0" else 0)  # trial 0: requeued, and continued
        assert len(read_history(run_dir)) == 200
    stopped = _metrics(sweep / "2")
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM"
    assert {"summary.md", "summary.csv", "best.yaml"} <= {p.name for p in sweep.iterdir()}
    best = OmegaConf.load(sweep / "best.yaml")
    assert best.command.startswith("python -m experiments.train experiment=xor seed=")
    # What SLURM recorded: trial 0 requeued, then completed; trial 2 failed (its trial's 143).
    executions = _sacct(job)
    assert [(s, c) for j, s, c in executions if j == f"{job}_0"] == [("REQUEUED", "0:0"), ("COMPLETED", "0:0")]
    assert [(s, c) for j, s, c in executions if j == f"{job}_1"] == [("COMPLETED", "0:0")]
    assert [s for j, s, _ in executions if j == f"{job}_2"] == ["FAILED"]


def test_a_trial_longer_than_its_time_limit_completes_exactly_and_a_failing_one_fails(
    cluster: dict[str, Any],
) -> None:
    sweep, started = cluster["limit"]
    result = started.wait()
    _no_traceback(result.stdout, result.stderr)
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: 1 of 2 trials did not complete (1 failed); see {sweep / 'summary.md'}"
    ]
    metrics = _metrics(sweep / "0")
    assert metrics["status"] == "completed" and metrics["restarts"] >= 1 and metrics["epochs"] == 400
    failed = _metrics(sweep / "1")
    assert failed["status"] == "failed" and "Invalid learning rate: -1" in failed["error"]
    job = _job_ids(sweep)[0].split("_")[0]
    executions = _sacct(job)
    # Trial 0 got its time limit's signal, stopped at its checkpoint and was requeued until it
    # completed; trial 1's job failed with its trial's exit code.
    states = [s for j, s, _ in executions if j == f"{job}_0"]
    assert states == ["REQUEUED"] * metrics["restarts"] + ["COMPLETED"], executions
    assert [(s, c) for j, s, c in executions if j == f"{job}_1"] == [("FAILED", "2:0")]
    log = (sweep / ".submitit" / f"{job}_0" / f"{job}_0_0_log.err").read_text()
    assert "this job is timed-out" in log and f"(restart {metrics['restarts']})" in log
    # Exactly the uninterrupted run.
    reference = cluster["reference"]
    assert cluster["reference_run"].wait().returncode == 0
    assert _same_weights(sweep / "0", reference)
    assert metrics["test"] == _metrics(reference)["test"] and metrics["best"] == _metrics(reference)["best"]
    assert _rows(read_history(sweep / "0")) == _rows(read_history(reference))


def _rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_a_requeued_sbatch_job_continues_its_run_and_ends_bit_identical(cluster: dict[str, Any]) -> None:
    plain = cluster["plain"]
    plain["requeue"].join(timeout=300)
    plain["captured"].join(timeout=300)
    job, run_dir = plain["job"], plain["dir"] / "run"
    deadline = time.monotonic() + 300
    while not (_sacct(job) and _sacct(job)[-1][1] in FINISHED):
        assert time.monotonic() < deadline, _sacct(job)
        time.sleep(1)
    assert [(s, c) for _, s, c in _sacct(job)] == [("REQUEUED", "0:0"), ("COMPLETED", "0:0")]
    err = (plain["dir"] / "job.err").read_text()
    _no_traceback(err)
    first = plain["first_segment"]
    stopped = first["metrics"]["step"]
    assert f"error: interrupted (SIGTERM) at step {stopped} " in err
    assert "continuing it from its checkpoints/last.ckpt (restart 1)" in err
    # The first segment's checkpoint held the step where it stopped, and its history rows stand.
    assert torch.load(plain["dir"] / "segment1-last.ckpt", weights_only=True)["global_step"] == stopped
    history = read_history(run_dir)
    assert history[: len(first["history"])] == first["history"] and len(history) == 400
    metrics = _metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["restarts"] == 1
    reference = cluster["reference"]
    assert cluster["reference_run"].wait().returncode == 0
    assert _same_weights(run_dir, reference)
    assert metrics["test"] == _metrics(reference)["test"]
    assert _rows(history) == _rows(read_history(reference))


def test_a_two_task_ddp_trial(cluster: dict[str, Any]) -> None:
    sweep, started = cluster["ddp"]
    result = started.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    _no_traceback(result.stdout, result.stderr)
    metrics = _metrics(sweep / "0")
    assert metrics["status"] == "completed" and metrics["epochs"] == 20
    [job] = _job_ids(sweep)
    assert _sacct(job) == [(job, "COMPLETED", "0:0")]
    log = next((sweep / ".submitit" / job).glob(f"{job}_0_log.err")).read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log + next((sweep / ".submitit" / job).glob(f"{job}_1_log.err")).read_text()


def test_ctrl_c_of_the_submitting_command_cancels_its_jobs(cluster: dict[str, Any]) -> None:
    sweep, started, interrupt = cluster["interrupted"]
    interrupt.join(timeout=300)
    result = started.wait(timeout=60)
    assert result.returncode == 130, result.stderr[-3000:]
    job = _job_ids(sweep)[0].split("_")[0]
    assert result.stderr.strip().splitlines() == [
        f"error: interrupted (Ctrl-C): cancelled the sweep's SLURM jobs (scancel {job}); their trials record "
        f"themselves as interrupted; continue the sweep with the same command and hydra.sweep.dir={sweep}"
    ]
    deadline = time.monotonic() + 60
    while {s.split()[0] for _, s, _ in _sacct(job)} != {"CANCELLED"}:  # "CANCELLED by 0"
        assert time.monotonic() < deadline, _sacct(job)
        time.sleep(1)


def test_sbatch_refusals_and_lightnings_srun_refusal_are_one_line(tmp_path: Path) -> None:
    _cluster()
    # GPUs asked of a CPU node.
    code, _, err = call_cli(
        "train", "-m", "experiment=xor", "hydra/launcher=slurm_gpu", f"hydra.sweep.dir={tmp_path / 'gpu'}"
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: sbatch refused the sweep's jobs: Invalid generic resource (gres) specification; the nodes have "
        "no such GPUs: on CPU nodes use hydra/launcher=slurm (which asks for none), on GPU nodes check "
        "hydra.launcher.gpus_per_node and hydra.launcher.partition (sinfo -o '%P %G' lists them)"
    ]
    # srun --ntasks=2 without a number of tasks per node: Lightning cannot place the processes.
    done = subprocess.run(
        [
            "srun",
            "--ntasks=2",
            "--cpus-per-task=1",
            sys.executable,
            "-m",
            "experiments.train",
            "experiment=xor",
            *QUIET,
            f"hydra.run.dir={tmp_path / 'ntasks'}",
        ],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if not line.startswith("srun: ")]
    assert (
        ours
        == [
            "error: trainer: SLURM: You set `--ntasks=2` in your SLURM bash script, but this variable is not supported. HINT: "
            "Use `--ntasks-per-node=2` instead; start one process per device with srun --ntasks-per-node=2 (and "
            "trainer.devices=2 with a DDP trainer, e.g. trainer=ddp_cpu), or one process with srun --ntasks=1"
        ]
        * 2
    ), done.stderr[-3000:]


# Without a cluster ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        ("slurm", ["--cpus-per-task=2", "--mem=4GB", "--time=60", "--requeue", "--signal=USR2@120"]),
        ("slurm_gpu", ["--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=60"]),
    ],
)
def test_launcher_configs_say_what_they_would_submit(
    launcher: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sbatch script each preset renders: a CPU node's by default (no GPU asked, which a CPU
    node refuses), a GPU node's with slurm_gpu."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra: pip install -e '.[test]'")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from submitit.slurm.slurm import _make_sbatch_string

    from experiments.config import CONFIG_DIR
    from hydra_plugins.experiments_slurm.slurm_launcher import SlurmLauncher

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=xor", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path}"],
            return_hydra_config=True,
        )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params.pop("_target_") == "hydra_plugins.experiments_slurm.slurm_launcher.SlurmLauncher"
    params.update(name="train", submitit_folder=str(tmp_path / ".submitit" / "%j"))
    # submitit looks for srun before it builds a SLURM executor; a stand-in lets it build one anywhere.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    executor = SlurmLauncher(**params)._executor()  # the parameters as the launcher hands them to submitit
    script = _make_sbatch_string(
        command="python -m experiments.train", folder=str(tmp_path), **executor._executor.parameters
    )
    for line in [*expected, "--nodes=1", "--ntasks-per-node=1", "--job-name=train"]:
        assert f"#SBATCH {line}\n" in script, script
    if launcher == "slurm":
        assert "gpus" not in script, script


def test_without_the_slurm_extra_choosing_the_launcher_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra imports every plugin module in every app: ours imports without hydra-submitit-launcher,
    and building the launcher then says what to install."""
    import importlib.util

    from experiments.errors import UserError

    for name in (
        "hydra_plugins.hydra_submitit_launcher.config",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it raises ImportError
    path = Path(__file__).parents[1] / "src" / "hydra_plugins" / "experiments_slurm" / "slurm_launcher.py"
    spec = importlib.util.spec_from_file_location("slurm_launcher_without_the_extra", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(UserError) as refusal:
        module.SlurmLauncher(timeout_min=60)
    assert str(refusal.value) == (
        "hydra/launcher=slurm needs hydra-submitit-launcher and submitit: pip install "
        "'lightning-hydra-experiments[slurm]' (pip install -e '.[slurm]' in a clone)"
    )
