"""A Hydra launcher that runs a multirun's jobs in forked worker processes, one job at a time each.

Why our own: the trials of this project are mostly small models trained with one torch thread
(``trainer.num_threads``), so Hydra's basic launcher, one job after another, leaves all but one
core idle. hydra-joblib-launcher runs jobs in loky workers, which are *spawned*: each imports
torch and Lightning again (2-3 s, as long as a whole XOR trial), and with ``n_jobs=-1`` it takes
every core even when each trial is a DDP job or runs on the one GPU. Forked workers start at once
with everything imported and the composed Hydra state; each job runs in a process of its own,
``n_jobs`` at a time, supervised by the launching process (``workers.py``: no process pool, whose
one dead worker ends all the others), and may still start DataLoader workers or processes of its own.

``n_jobs: auto`` (the default) decides per launch, from each job's trainer settings:

- jobs on one CPU device: one worker per core this process may use (``os.sched_getaffinity``);
- jobs on one GPU: ``jobs_per_gpu`` workers per visible GPU, each worker with one GPU of its own
  (``CUDA_VISIBLE_DEVICES``, set in the worker before CUDA starts), so an 8-GPU node trains 8
  trials at once;
- jobs on several devices, DDP, or a mix: one at a time, in this process (as Hydra's basic
  launcher does);

never more workers than there are jobs. An integer ``n_jobs`` is taken as it is; single-GPU jobs
then share the GPUs round-robin (several small jobs per GPU). The choice is written into every
job's Hydra config (``hydra.launcher.n_jobs``), where ``trainer.num_threads=auto`` reads it to
share the cores.

How a grid sweep ends (``experiments.summarize.finish_sweep`` says it, and writes the summary for
every ending):

- every job's process ended: Hydra's ``on_multirun_end`` summarises; exit code 0 when every trial
  completed, 3 and one line when one failed, was interrupted or killed;
- a job's process killed (SIGKILL, out of memory) or stopped by a signal sent to it alone: its trial
  is recorded (``killed``, or ``interrupted`` by the run itself) with one line, and the other jobs
  go on;
- Ctrl-C or SIGTERM to the sweep: passed on to each running job once (the jobs run in process
  groups of their own), each stops as a run does and records itself, no other job starts, the
  summary is written, and the command ends with one line and 130 or 143;
- the launching process killed: its jobs' processes die with it (``PR_SET_PDEATHSIG``).

The sweep folder is taken first (``sweep_folder.py``): a second sweep into the folder of a live one,
or a grid sweep into another sweep's folder, is refused in one line before anything is written.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.errors import interrupted, one_line
from experiments.runs import read_metrics
from experiments.signals import SIGINT_EXIT, SIGTERM_EXIT, Interrupted, is_sigterm, signals_held, sigterm_raises
from experiments.summarize import finish_sweep
from experiments.sweeps import SWEEPER_TARGET
from hydra_plugins.experiments_launcher.sweep_folder import SweepLock, refuse_another_sweep
from hydra_plugins.experiments_launcher.workers import PassedOn, ending, record_lost, start_worker

log = logging.getLogger(__name__)

AUTO = "auto"
# The launch in progress, as the forked workers inherit it: a job's overrides and Hydra's state
# travel by fork, not by pickling (the task function hydra.main wraps can't be pickled).
_LAUNCH: dict[str, Any] = {}
TERMINATED = (
    "interrupted (SIGTERM); the jobs that were running stopped and no other started; run the same "
    "command again to continue the sweep"
)


class ParallelLauncher(Launcher):
    """Runs a multirun's jobs in ``n_jobs`` forked worker processes (see the module's docstring)."""

    def __init__(self, n_jobs: int | str = AUTO, jobs_per_gpu: int = 1) -> None:
        if n_jobs != AUTO and (not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1):
            raise ValueError(f"hydra.launcher.n_jobs must be auto or a positive integer, got {n_jobs!r}")
        if not isinstance(jobs_per_gpu, int) or isinstance(jobs_per_gpu, bool) or jobs_per_gpu < 1:
            raise ValueError(f"hydra.launcher.jobs_per_gpu must be a positive integer, got {jobs_per_gpu!r}")
        self.n_jobs = n_jobs
        self.jobs_per_gpu = jobs_per_gpu
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        # Whether this launcher ends the sweep (a grid sweep); under our Optuna sweeper, which
        # launches one trial at a time, the sweeper does.
        self.ends_sweep = True
        self.lock: SweepLock | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        self.ends_sweep = OmegaConf.select(config, "hydra.sweeper._target_") != SWEEPER_TARGET
        if self.ends_sweep:
            # Before Hydra's sweeper writes multirun.yaml into the folder: a live sweep there is
            # refused (the lock), and so is another sweep's folder.
            sweep_dir = Path(str(config.hydra.sweep.dir))
            self.lock = SweepLock(sweep_dir).acquire()
            try:
                refuse_another_sweep(sweep_dir, config)
            except BaseException:
                self.lock.release()
                raise

    @property
    def sweep_dir(self) -> Path:
        assert self.config is not None
        return Path(str(self.config.hydra.sweep.dir))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        setup_globals()
        devices = self.devices_of(job_overrides)
        gpus = _visible_gpus() if devices == "gpu" else []
        if self.n_jobs != AUTO:
            workers = int(self.n_jobs)
        elif devices == "cpu":
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        else:
            workers = len(gpus) * self.jobs_per_gpu or 1
        workers = max(1, min(workers, len(job_overrides)))
        with open_dict(self.config):
            # Each job's config is composed again from these overrides (load_sweep_config).
            kept = [o for o in self.config.hydra.overrides.hydra if not o.startswith("hydra.launcher.n_jobs=")]
            self.config.hydra.overrides.hydra = [*kept, f"hydra.launcher.n_jobs={workers}"]
        log.info(
            f"Launching {len(job_overrides)} jobs, {workers} at a time, sweep output dir: {self.config.hydra.sweep.dir}"
        )
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
        _LAUNCH.update(launcher=self, jobs=list(job_overrides), first=initial_job_idx, gpus=list(gpus))
        try:
            if not self.ends_sweep:  # a trial of our Optuna sweeper: it reads how the job ended
                return [_run_job(i) for i in range(len(job_overrides))]
            if workers == 1:
                return self._launch_here(len(job_overrides))
            if gpus:
                log.info(f"GPUs {', '.join(gpus)} shared by {workers} workers")
            return self._launch_forked(len(job_overrides), workers)
        finally:
            _LAUNCH.clear()

    def devices_of(self, job_overrides: Sequence[Sequence[str]]) -> str:
        """What every job trains on: ``cpu`` or ``gpu`` (one device of that kind, no DDP), else
        ``many`` (several devices, DDP, a mix, or settings that could not be read).

        The trainer node of the primary config stands for the jobs that override no trainer or
        experiment setting; the others are composed once per distinct set of such overrides."""
        assert self.config is not None and self.hydra_context is not None
        kinds = set()
        composed: dict[tuple[str, ...], Any] = {}
        for job in job_overrides:
            key = tuple(
                sorted(o for o in job if o.lstrip("+~").split("=")[0].split(".")[0] in ("trainer", "experiment"))
            )
            if key not in composed:
                try:
                    config = (
                        self.config
                        if not key
                        else self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
                    )
                    composed[key] = _device_kind(config.get("trainer") or {})
                except Exception:  # noqa: BLE001 - the job itself will report its settings in one line
                    composed[key] = "many"
            kinds.add(composed[key])
        return kinds.pop() if len(kinds) == 1 else "many"

    def _launch_here(self, count: int) -> list[JobReturn]:
        """The jobs one after another in this process (jobs on several devices, DDP, n_jobs=1)."""
        results, lost = [], []
        for position in range(count):
            try:
                result = _run_job(position)
            except BaseException as err:
                signum = signal.SIGINT if interrupted(err) else signal.SIGTERM if is_sigterm(err) else None
                if signum is not None:
                    self._stopped(signum)
                if not isinstance(err, SystemExit):
                    raise
                # A job refused in one line (printed) before it recorded anything: the others go on.
                lost.append(f"job {_LAUNCH['first'] + position} ended with exit code {err.code}")
                continue
            if result.status == JobStatus.FAILED:
                lost.append(f"job {_LAUNCH['first'] + position} failed: {_failed(result)}")
            else:
                results.append(result)
        self._ended(lost)
        return results

    def _launch_forked(self, count: int, workers: int) -> list[JobReturn]:
        """The jobs in forked processes, ``workers`` at a time, supervised here (module docstring)."""
        sys.stdout.flush()
        sys.stderr.flush()
        context = multiprocessing.get_context("fork")
        waiting = list(range(count))
        running: dict[int, _Job] = {}  # by slot: slot i runs on GPU i (round-robin) when jobs use one
        results: dict[int, JobReturn] = {}
        lost: list[str] = []
        with PassedOn(lambda: [job.process.pid or 0 for job in running.values()]) as signals:
            while running or (waiting and not signals.received):
                for slot in range(workers):
                    if slot not in running and waiting and not signals.received:
                        with signals.holding():
                            running[slot] = _Job.start(context, waiting.pop(0), slot)
                if not running:
                    break
                ready = multiprocessing.connection.wait(
                    [job.reader for job in running.values()] + [job.process.sentinel for job in running.values()]
                )
                for slot, job in list(running.items()):
                    if job.reader in ready or job.process.sentinel in ready:
                        job.read()
                    if job.done:
                        del running[slot]
                        self._settle(job, results, lost, stopped=bool(signals.received))
        if signals.stopped_by is not None:
            self._stopped(signals.stopped_by)
        self._ended(lost)
        return [results[position] for position in sorted(results)]

    def _settle(self, job: _Job, results: dict[int, JobReturn], lost: list[str], stopped: bool) -> None:
        """What a job's ended process left: its result, or one line for a job that did not end as a
        run does (killed; stopped by a signal sent to it alone)."""
        kind, value = job.outcome if job.outcome is not None else ("died", None)
        number = _LAUNCH["first"] + job.position
        if kind == "result" and isinstance(value, JobReturn):
            results[job.position] = value
        elif kind == "interrupted":
            how = ending(job.process.exitcode)
            if stopped:  # the sweep's own stop: its line says it
                pass
            elif job.dir is None or not job.dir.is_dir():  # a signal sent to this job alone, so early
                lost.append(f"job {number} {how} before it made its folder")
            else:  # a signal sent to this job alone: the sweep goes on
                line = record_lost(job.dir, how, job.process.pid, "interrupted") or one_line(
                    str(read_metrics(job.dir).get("error") or how)
                )
                print(f"interrupted: {line} | {job.dir}", flush=True)
        elif kind == "died":
            how = ending(job.process.exitcode)
            killed = record_lost(job.dir, how, job.process.pid) if job.dir is not None else None
            if killed is not None:
                print(f"killed: {killed} | {job.dir}", flush=True)
            elif job.dir is None or not job.dir.is_dir():
                lost.append(f"job {number} {how} before it made its folder")
        elif not (job.dir is not None and read_metrics(job.dir).get("status")):
            # "failed" before its run recorded anything: the job's process said why (a traceback,
            # or its one line); its folder, if it has one, may be another process's.
            lost.append(f"job {number}: {value}")

    def _stopped(self, signum: int) -> None:
        """Ctrl-C or SIGTERM stopped the sweep: the summary of what completed, then the signal's
        line and exit code (run_cli says it for Ctrl-C). Another Ctrl-C or SIGTERM waits until the
        summary is written."""
        with signals_held():
            finish_sweep(self.sweep_dir, stopped=True)
        if signum == signal.SIGTERM:
            print(f"error: {TERMINATED}", file=sys.stderr, flush=True)
            raise Interrupted(SIGTERM_EXIT)  # its line is said
        raise KeyboardInterrupt

    def _ended(self, lost: list[str]) -> None:
        """Every job ran: jobs that left no trial folder end the sweep here (the summary, one line,
        exit code 3); otherwise Hydra's on_multirun_end does."""
        if lost:
            finish_sweep(self.sweep_dir, problem=f"{len(lost)} jobs left no trial folder ({'; '.join(lost)[:400]})")


class _Job:
    """A job's process, as the launching process sees it: its trial folder once it says which,
    then how it ended. (No dataclass: Hydra's plugin scan imports this module in a way that
    dataclasses cannot look up.)"""

    def __init__(self, position: int, process: Any, reader: Any) -> None:
        self.position = position
        self.process = process
        self.reader = reader
        self.dir: Path | None = None
        self.outcome: tuple[str, Any] | None = None
        self.done = False

    @classmethod
    def start(cls, context: Any, position: int, slot: int) -> _Job:
        reader, writer = context.Pipe(duplex=False)
        number = _LAUNCH["first"] + position
        process = context.Process(target=_job_process, args=(position, slot, writer, os.getpid()), name=f"job-{number}")
        process.start()
        writer.close()  # the job's end of the pipe is the job's alone: its end is seen as EOF here
        return cls(position, process, reader)

    def read(self) -> None:
        """Take what the job sent; once its process has ended, and its pipe is drained, it is done."""
        while True:
            try:
                if not self.reader.poll():
                    break
                kind, value = self.reader.recv()
            except (EOFError, OSError):
                self.done = True
                break
            if kind == "dir":
                self.dir = Path(value)
            else:
                self.outcome = (kind, value)
        if self.done or not self.process.is_alive():
            self.process.join()
            self.done = True
            self.reader.close()


def _failed(result: JobReturn) -> str:
    """A job whose task function raised past its run's record (a bug): its traceback, and why in a line."""
    err = result._return_value  # private: hydra 1.3 -- the exception (return_value re-raises it)
    if isinstance(err, BaseException):
        traceback.print_exception(type(err), err, err.__traceback__)
    return one_line(f"{type(err).__name__}: {err}")[:200]


def _device_kind(trainer: Any) -> str:
    """``cpu`` or ``gpu`` for a trainer on one device of that kind without DDP, else ``many``."""
    accelerator = str(trainer.get("accelerator", "cpu"))
    if (
        "ddp" in str(trainer.get("strategy"))
        or str(trainer.get("devices", 1)) != "1"
        or trainer.get("num_nodes", 1) != 1
    ):
        return "many"
    if accelerator == "auto":
        accelerator = "gpu" if _visible_gpus() else "cpu"
    return {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}.get(accelerator, "many")


def _visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (without starting
    CUDA: Lightning makes torch count them through NVML, so forked workers can still start it)."""
    import torch  # loaded by the task function already; not at Hydra's plugin scan

    count = torch.cuda.device_count()
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[:count] if visible else [str(i) for i in range(count)]


def _start_worker(slot: int) -> None:
    """A job's process, before its job: the GPU of its slot (when the jobs use one)."""
    gpus = _LAUNCH.get("gpus")
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]


def _job_config(position: int) -> DictConfig:
    """The Hydra config of job ``position`` of the launch in progress, set as the current one."""
    launcher: ParallelLauncher = _LAUNCH["launcher"]
    assert launcher.config is not None and launcher.hydra_context is not None
    idx = _LAUNCH["first"] + position
    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, list(_LAUNCH["jobs"][position])
    )
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return sweep_config


def _run_job(position: int, sweep_config: DictConfig | None = None) -> JobReturn:
    """Job ``position`` of the launch in progress, run in this process, as Hydra's basic launcher does."""
    launcher: ParallelLauncher = _LAUNCH["launcher"]
    assert launcher.hydra_context is not None and launcher.task_function is not None
    return run_job(
        hydra_context=launcher.hydra_context,
        config=sweep_config if sweep_config is not None else _job_config(position),
        task_function=launcher.task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _job_process(position: int, slot: int, pipe: Any, parent: int) -> None:
    """A job's forked process: it tells the launching process its trial folder, runs the job as a
    command would (Ctrl-C and SIGTERM stop it as they stop a run), sends how it ended, and exits."""
    start_worker(parent)
    _start_worker(slot)
    code = 0
    try:
        with sigterm_raises():
            config = _job_config(position)
            pipe.send(("dir", str(Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir))))
            result = _run_job(position, config)
        if result.status == JobStatus.FAILED:
            outcome: tuple[str, Any] = ("failed", _failed(result))
        else:
            outcome = ("result", result)
    except BaseException as err:  # every ending is sent to the launching process
        if interrupted(err) or is_sigterm(err):
            # The run recorded itself; the launching process says what stopped the sweep.
            outcome, code = ("interrupted", None), SIGINT_EXIT if interrupted(err) else SIGTERM_EXIT
        elif isinstance(err, SystemExit):  # a job refused in one line (printed) before it recorded anything
            outcome, code = ("failed", f"ended with exit code {err.code}"), 2
        else:
            traceback.print_exc()
            outcome, code = ("failed", one_line(f"{type(err).__name__}: {err}")[:200]), 1
    try:
        pipe.send(outcome)
    except (OSError, ValueError):  # the launching process is gone: nobody to tell
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not multiprocessing's exit, which would wait for threads a job left running
