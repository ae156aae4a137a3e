"""A Hydra launcher that runs a multirun's jobs in forked worker processes, one job at a time each.

Why our own: the trials of this project are mostly small models trained with one torch thread
(``trainer.num_threads``), so Hydra's basic launcher, one job after another, leaves all but one
core idle. hydra-joblib-launcher runs jobs in loky workers, which are *spawned*: each imports
torch and Lightning again (2-3 s, as long as a whole XOR trial), and with ``n_jobs=-1`` it takes
every core even when each trial is a DDP job or runs on the one GPU. Forked workers start at once
with everything imported and the composed Hydra state; the standard library's
``ProcessPoolExecutor`` carries the jobs and their results (its workers are not daemons, so a job
may still start DataLoader workers or processes of its own).

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

Ctrl-C reaches the whole process group: a job takes it as any run does (it stops at the next
batch end and records itself as interrupted), its worker then exits, and the multirun ends with
one line instead of a traceback per worker; jobs not yet started are not started.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from experiments.errors import UserError, interrupted
from experiments.signals import Terminated

log = logging.getLogger(__name__)

AUTO = "auto"
# The launch in progress, as the forked workers inherit it: a job's overrides and Hydra's state
# travel by fork, not by pickling (the task function hydra.main wraps can't be pickled).
_LAUNCH: dict[str, Any] = {}


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

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

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
        _LAUNCH.update(launcher=self, jobs=list(job_overrides), first=initial_job_idx)
        try:
            if workers == 1:
                return [_run_job(i) for i in range(len(job_overrides))]
            if gpus:
                log.info(f"GPUs {', '.join(gpus)} shared by {workers} workers")
            return self._launch_forked(len(job_overrides), workers, gpus)
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

    def _launch_forked(self, count: int, workers: int, gpus: Sequence[str] = ()) -> list[JobReturn]:
        sys.stdout.flush()
        sys.stderr.flush()
        context = multiprocessing.get_context("fork")
        stop = _LAUNCH["stop"] = context.Event()
        # Each worker takes the next GPU, round-robin, when it starts (before any CUDA call).
        _LAUNCH.update(gpus=list(gpus), started=context.Value("i", 0))
        # Ctrl-C reaches every worker too, and each running job stops as a run does; this process
        # only tells the workers not to start another job, and waits for them (a KeyboardInterrupt
        # raised here would leave them running; a worker that exits breaks the pool, whose manager
        # then sends SIGTERM to the jobs still recording themselves). SIGTERM (a scheduler's
        # preemption, or kill) reaches only this process: it passes it on to the workers, whose jobs
        # stop as a run does, and then ends with the code of SIGTERM.
        received: list[int] = []

        def note(signum: int, _: Any) -> None:
            received.append(signum)
            stop.set()
            if signum == signal.SIGTERM:
                for worker in multiprocessing.active_children():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid or 0, signal.SIGTERM)

        previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
                futures = [pool.submit(_run_job_in_worker, i) for i in range(count)]
                results = [_result(f) for f in futures]
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if signal.SIGTERM in received:
            print(
                "error: interrupted (SIGTERM); the jobs that were running stopped and no other started; "
                "continue one with resume=<job dir>",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + signal.SIGTERM)
        if received or any(r is INTERRUPTED for r in results):
            raise KeyboardInterrupt
        lost = [_LAUNCH["first"] + i for i, r in enumerate(results) if r is None]
        if lost:
            # The pool ends every worker once one has died: the jobs that had not ended are lost.
            raise UserError(
                f"a worker of this multirun died (killed, or out of memory), and jobs {lost} did not "
                f"finish; rerun them (resume=<job dir>), or the multirun with hydra.launcher.n_jobs=1"
            )
        return [r for r in results if isinstance(r, JobReturn)]


INTERRUPTED = "interrupted"


def _result(future: Future) -> JobReturn | str | None:
    try:
        return future.result()
    except BrokenProcessPool:
        return None


def _terminate_job(signum: int, frame: Any) -> None:
    raise Terminated


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


def _start_worker() -> None:
    """A new worker: its GPU (when the jobs use one), and no signals between jobs."""
    gpus, started = _LAUNCH.get("gpus"), _LAUNCH.get("started")
    if gpus and started is not None:
        with started.get_lock():
            index = started.value
            started.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    _between_jobs()


def _between_jobs() -> None:
    # Between jobs a worker ignores Ctrl-C and SIGTERM: the launching process stops the launch.
    # (During a job, Lightning's own SIGTERM handler stops fitting at the next batch.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run_job(position: int) -> JobReturn:
    """Job ``position`` of the launch in progress, run in this process, as Hydra's basic launcher does."""
    launcher: ParallelLauncher = _LAUNCH["launcher"]
    assert launcher.config is not None and launcher.hydra_context is not None and launcher.task_function is not None
    idx = _LAUNCH["first"] + position
    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, list(_LAUNCH["jobs"][position])
    )
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=launcher.hydra_context,
        config=sweep_config,
        task_function=launcher.task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _run_job_in_worker(position: int) -> JobReturn | str:
    """:func:`_run_job` in a forked worker: not started after Ctrl-C, and ``INTERRUPTED`` when Ctrl-C stopped it."""
    if _LAUNCH["stop"].is_set():
        return INTERRUPTED
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # SIGTERM passed on by the launching process ends the job as it ends a run, also before the
        # run has put its own handler in place (a SIGTERM ignored then was lost, and the job ran on).
        signal.signal(signal.SIGTERM, _terminate_job)
        if _LAUNCH["stop"].is_set():  # a signal came while the worker still ignored it
            return INTERRUPTED
        return _run_job(position)
    except BaseException as err:
        # Ctrl-C surfaces as KeyboardInterrupt, or as the SystemExit Lightning raises after one;
        # SIGTERM as the run's own Terminated or Lightning's SystemExit. The job has recorded
        # itself, and the launching process says so once. Once that process has asked the workers
        # to stop, whatever the signal broke on its way out (Hydra wraps it in a
        # ConfigCompositionException while composing) is that stop.
        if not (interrupted(err) or _LAUNCH["stop"].is_set()):
            raise
        return INTERRUPTED
    finally:
        _between_jobs()
