"""Our SLURM launcher (``hydra/launcher=slurm``): hydra-submitit-launcher's, made to survive a real cluster.

Why a subclass: hydra-submitit-launcher 1.2 submits the sweep as one job array through submitit
and runs each trial through Hydra's ``run_job`` in its job, which we keep. What it does not do,
and this class does (each seen failing on a real SLURM 22.05 cluster, docs/clusters.md):

- Its ``launch`` collects the results in order and raises at the first job that has none (a
  trial preempted, cancelled, timed out or on a lost node): a 40-line ``UncompletedJobError``, no
  summary, the other jobs left running. Here each job is waited for on its own; one without a
  result is a trial read from its own run record (``metrics.json``: interrupted, killed, failed),
  and the sweep still ends with its summary and ``best.yaml``.
- A restarted job (a SLURM requeue, a preemption, submitit's resubmission) runs the trial again
  in its folder, where it continues from its ``last.ckpt`` (experiments.record); submitit's
  time-limit signal (``USR2`` before ``timeout_min``) raised ``SystemExit(-1)`` or
  ``UncompletedJobError`` wherever the trial happened to be. Here the signal stops the trial as
  SIGTERM does (at the next batch end, with its checkpoint, recorded as interrupted), and only
  then does submitit requeue the job (at most ``max_num_timeout`` times for time-outs), so that a
  trial longer than its time limit continues until it completes.
- A job's exit code is its trial's: 0 completed (or pruned), 2 failed, 143 interrupted, so that
  ``sacct`` says FAILED for a failed trial (it said COMPLETED 0:0); the result is still handed
  back, by exiting only after submitit has written it.
- sbatch's refusals (a GPU asked of a CPU node, more CPUs or memory than a node has) are one line
  with the setting to change, not a traceback; a missing ``srun`` or extra likewise.
- Ctrl-C (or SIGTERM) of the submitting command cancels the sweep's jobs (``scancel``), or with
  ``cancel_on_interrupt=false`` leaves them running and prints how to cancel or summarise them.

The plugins may use only the errors, signals, run files, sweeps and summaries of the package
(pyproject.toml's contracts), and Hydra imports this module in every app: submitit itself is
imported only when a sweep is launched, and without the ``[slurm]`` extra this module still
imports, and choosing ``hydra/launcher=slurm`` is refused in one line.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

from experiments.errors import UserError
from experiments.runs import HOLDER, read_json, read_metrics, write_atomic, write_json
from experiments.signals import SIGINT_EXIT, SIGTERM_EXIT, Interrupted, Terminated, sigterm_raises

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
except ImportError:  # the [slurm] extra is not installed: hydra/launcher=slurm says so in one line
    SubmititSlurmLauncher = BaseQueueConf = None

log = logging.getLogger(__name__)

INSTALL = "pip install 'lightning-hydra-experiments[slurm]' (pip install -e '.[slurm]' in a clone)"
# A job's exit code for the status its trial recorded (sacct shows FAILED for any but 0).
EXIT_CODES = {"completed": 0, "pruned": 0, "failed": 2, "interrupted": SIGTERM_EXIT, "killed": 128 + 9}
# What each of sbatch's refusals asks the user to change.
SBATCH_FIXES = (
    (
        "generic resource",
        "the nodes have no such GPUs: on CPU nodes use hydra/launcher=slurm (which asks for none), on GPU "
        "nodes check hydra.launcher.gpus_per_node and hydra.launcher.partition (sinfo -o '%P %G' lists them)",
    ),
    (
        "node configuration is not available",
        "no node has that many CPUs, that much memory or those GPUs: lower hydra.launcher.cpus_per_task, "
        "hydra.launcher.mem_gb or hydra.launcher.gpus_per_node (sinfo -o '%P %c %m %G' shows what nodes have)",
    ),
    ("partition", "pass one of the cluster's partitions (sinfo -s lists them): hydra.launcher.partition=<name>"),
    ("account", "pass an account you may use (sacctmgr show assoc user=$USER): hydra.launcher.account=<name>"),
    ("time limit", "lower hydra.launcher.timeout_min to the partition's limit (sinfo -o '%P %l')"),
    ("qos", "pass a QOS you may use: hydra.launcher.qos=<name>"),
)
# How often a finished job's state is asked of SLURM at most (submitit's default: every 10 minutes
# late in a long sweep, so a job that ends without a result was noticed up to 10 minutes late).
STATE_POLL_SECONDS = 30
# How often squeue is asked whether a job still runs, on a cluster without accounting.
QUEUE_POLL_SECONDS = 10


class _NotInstalled(Launcher):
    """Stands in for hydra-submitit-launcher's launcher where it is not installed."""

    def __init__(self, **params: Any) -> None:
        raise UserError(f"hydra/launcher=slurm needs hydra-submitit-launcher and submitit: {INSTALL}")

    def setup(self, **kwargs: Any) -> None:  # pragma: no cover - never built
        raise NotImplementedError

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        raise NotImplementedError  # pragma: no cover - never built


_Base: Any = SubmititSlurmLauncher if SubmititSlurmLauncher is not None else _NotInstalled


class SlurmLauncher(_Base):
    """hydra-submitit-launcher's SLURM launcher whose sweeps survive a real cluster (see the module's
    docstring). ``cancel_on_interrupt``: whether Ctrl-C of the submitting command cancels the jobs."""

    def __init__(self, cancel_on_interrupt: bool = True, **params: Any) -> None:
        super().__init__(**params)
        self.cancel_on_interrupt = cancel_on_interrupt
        self._no_accounting = False

    # The submitting side ----------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the jobs as one array, then wait for each on its own (a copy of the parent's
        submission: the parent's ``launch`` also collects the results, and stops at the first job
        without one)."""
        import submitit
        from hydra.core.utils import setup_globals

        assert self.config is not None
        setup_globals()
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        job_params = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
            )
        folders = [self._job_dir(overrides, number) for overrides, _, number, _, _ in job_params]
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):  # submitit prints sbatch's refusal before raising it
                jobs = executor.map_array(self, *zip(*job_params))
        except submitit.core.utils.FailedJobError as err:
            raise UserError(_sbatch_refusal(str(err))) from None
        ids = sorted({job.job_id.split("_")[0] for job in jobs})
        # A job that ended without a result is noticed by asking SLURM (sacct) for its state.
        submitit.SlurmJob.watcher._delay_s = STATE_POLL_SECONDS  # private: submitit 1.5
        self._no_accounting = not _accounting(jobs[0].job_id)
        if self._no_accounting:
            # submitit would ask sacct every few seconds, and print its refusal each time.
            submitit.SlurmJob.watcher.update = lambda: None  # type: ignore[method-assign]
            print(
                "note: this cluster keeps no job accounting (sacct fails): a job that ends without a result "
                f"is noticed with squeue, within {QUEUE_POLL_SECONDS} s",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"slurm: submitted {len(jobs)} trial(s) as job {' '.join(ids)} (logs in {sweep_dir / '.submitit'}); "
            f"cancel with: scancel {' '.join(ids)}",
            flush=True,
        )
        try:
            return [
                self._result(job, overrides, number, folder)
                for (overrides, _, number, _, _), job, folder in zip(job_params, jobs, folders)
            ]
        except (KeyboardInterrupt, Terminated) as stop:
            self._stopped(stop, ids, sweep_dir)
            raise  # not reached: _stopped raises

    def _executor(self) -> Any:
        """submitit's SLURM executor with this launcher's parameters, as the parent builds it."""
        import submitit

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder"), "slurm_max_num_timeout": params.pop("max_num_timeout")}
        try:
            executor = submitit.AutoExecutor(cluster="slurm", **init)
        except RuntimeError as err:  # no srun: not a SLURM machine
            raise UserError(
                f"hydra/launcher=slurm submits to SLURM, and this machine has none ({err}); run the sweep on a "
                "cluster's login node, or without hydra/launcher=slurm"
            ) from None
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        try:
            executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
        except (ValueError, TypeError) as err:
            raise UserError(
                f"hydra.launcher: {' '.join(str(err).split())}; fix the hydra.launcher.* settings"
            ) from None
        return executor

    def _job_dir(self, overrides: Sequence[str], number: int) -> Path:
        """The folder of job ``number`` (``hydra.sweep.dir/hydra.sweep.subdir``), as its run will see it."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

    def _result(self, job: Any, overrides: Sequence[str], number: int, folder: Path) -> JobReturn:
        """The trial's return, or, for a job that ended without one, what its run recorded."""
        import submitit

        asked = time.monotonic()
        while not job.done():
            time.sleep(1)
            if self._no_accounting and time.monotonic() - asked > QUEUE_POLL_SECONDS:
                # submitit would wait for ever for a job that ended without a result: squeue lists
                # a job until it has ended.
                asked = time.monotonic()
                if not _queued(job.job_id):
                    break
        status = read_metrics(folder).get("status")
        # An interrupted trial leaves no result on purpose; any other may still be on its way to
        # this file system, which submitit waits for (when SLURM has said the job ended).
        if job.task(0).paths.result_pickle.exists() or (job.done() and status not in ("interrupted", "killed")):
            try:
                returned: JobReturn = job.results()[0]
            except submitit.core.utils.UncompletedJobError as err:
                why = str(err).strip().splitlines()[-1] if isinstance(err, submitit.core.utils.FailedJobError) else ""
            else:
                if returned.status != JobStatus.FAILED:
                    return returned
                why = f"{type(returned._return_value).__name__}: {returned._return_value}"  # private: hydra 1.3
        else:
            why = ""
        ended = f"ended {job.state}" if job.state != "UNKNOWN" else "left the queue"
        # A job whose trial raised past its run record (why) failed; one that left no word was killed.
        line = f"slurm: job {job.job_id} {ended}: {why}" if why else f"slurm: job {job.job_id} {ended} without a result"
        status = _record_lost(folder, overrides, "failed" if why else "killed", line)
        reason = f" ({why})" if why else ""
        print(
            f"slurm: job {job.job_id} (trial {number}) {ended}{reason}; its run: {status} | {folder}",
            flush=True,
        )
        hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(folder)}, "job": {"num": number}}})
        return JobReturn(
            overrides=list(overrides),
            hydra_cfg=hydra_cfg,
            working_dir=str(folder),
            status=JobStatus.COMPLETED,  # the sweep goes on; the trial's status is in its run record
            _return_value=None,
        )

    def _stopped(self, stop: BaseException, ids: list[str], sweep_dir: Path) -> None:
        """Ctrl-C or SIGTERM of the submitting command: cancel the jobs (or say how), in one line."""
        what, code = ("Ctrl-C", SIGINT_EXIT) if isinstance(stop, KeyboardInterrupt) else ("SIGTERM", SIGTERM_EXIT)
        jobs = " ".join(ids)
        if self.cancel_on_interrupt:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
            line = (
                f"interrupted ({what}): cancelled the sweep's SLURM jobs (scancel {jobs}); their trials record "
                f"themselves as interrupted; continue the sweep with the same command and hydra.sweep.dir={sweep_dir}"
            )
        else:
            line = (
                f"interrupted ({what}); the sweep's SLURM jobs keep running (hydra.launcher.cancel_on_interrupt="
                f"false): cancel them with: scancel {jobs}; summarise the sweep once they end with: "
                f"python -m experiments.summarize {sweep_dir}"
            )
        print(f"error: {line}", file=sys.stderr, flush=True)
        raise Interrupted(code) from None

    # The job's side ---------------------------------------------------------------------------

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """Run the trial in the SLURM job (called by submitit there): a restarted job continues it
        from its folder's ``last.ckpt`` (experiments.record does that for any run started again in
        its folder), the time-limit signal stops it as SIGTERM does, and the job ends with the
        trial's exit code."""
        time_limit = _TimeLimitSignal()
        with sigterm_raises():  # as the command line has it: SIGTERM stops the trial, not the process
            submitits = time_limit.install()
            try:
                returned = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
                stop: SystemExit | None = None
            except SystemExit as err:  # a trial stopped by a signal ends the job without a result
                stop, returned = err, None
            # The trial is over: a signal from now on (the time limit's, during teardown) changes nothing.
            signal.signal(time_limit.signum, signal.SIG_IGN)
        folder = self._job_dir(sweep_overrides, job_num)
        metrics = read_metrics(folder)
        status = metrics.get("status")
        rank_zero = os.environ.get("SLURM_PROCID", "0") == "0"
        if time_limit.received and status not in ("completed", "pruned", "failed"):
            # The trial stopped at its checkpoint: now submitit requeues the job (or, once it has timed
            # out max_num_timeout times, ends it), and the restarted job continues the trial.
            if rank_zero and callable(submitits):
                submitits(time_limit.signum, None)
            raise SystemExit(SIGTERM_EXIT)
        code = EXIT_CODES.get(str(status)) if rank_zero else 0
        if stop is not None:
            # Lightning's SIGTERMException has no code (it would exit 0); a refusal before the run
            # began (a user error, exit code 2) has no status.
            raise SystemExit(code or (stop.code if isinstance(stop.code, int) else SIGTERM_EXIT)) from None
        if code:
            _exit_after_result(code)
        return returned


class _TimeLimitSignal:
    """submitit's signal before the time limit (or at a preemption): SIGTERM's stop instead of
    submitit's requeue from inside the signal handler, which raised wherever the trial was."""

    def __init__(self) -> None:
        self.received = False
        self.signum = 0

    def install(self) -> Any:
        """Take over the signal; returns submitit's handler, to be called once the trial stopped."""
        import submitit

        self.signum = submitit.JobEnvironment._usr_sig()  # private: submitit 1.5
        return signal.signal(self.signum, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        self.received = True
        log.warning("SLURM's signal before the time limit (or a preemption): the trial stops at its next checkpoint")
        signal.raise_signal(signal.SIGTERM)


def _accounting(job_id: str) -> bool:
    """Whether sacct answers (slurmdbd keeps job accounting), which submitit needs to see a job end
    that left no result."""
    done = subprocess.run(["sacct", "-n", "-X", "-j", job_id, "-o", "JobID"], capture_output=True, timeout=60)
    return done.returncode == 0


def _queued(job_id: str) -> bool:
    """Whether SLURM still holds ``job_id`` (pending, running, completing), by squeue."""
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and bool(done.stdout.strip())


def _exit_after_result(code: int) -> None:
    """End the job with ``code`` once submitit has written the trial's result (after this call
    returns): SLURM then records the job as FAILED while the sweep still gets the trial's return."""

    def leave() -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    atexit.register(leave)


def _record_lost(folder: Path, overrides: Sequence[str], status: str, line: str) -> str:
    """The status of a trial whose job ended without a result: its run's own, or ``status``
    (``failed``: it raised past its run record; ``killed``: it died without a word), recorded
    where its run could not: a process that died holding the folder, or a run that never began
    (a folder then made for it, so that the summary lists it). A folder that holds another run, or
    a run that recorded nothing but is not held, is left alone."""
    recorded = read_metrics(folder).get("status")
    if recorded in EXIT_CODES:
        return str(recorded)
    holder = read_json(folder / HOLDER)
    started = (folder / ".hydra" / "overrides.yaml").is_file()
    if started and not holder:
        return str(recorded or "no record")
    if not started:
        if folder.exists() and any(folder.iterdir()):
            return "no record"
        text = OmegaConf.to_yaml(OmegaConf.create(list(overrides)))
        write_atomic(folder / ".hydra" / "overrides.yaml", lambda handle: handle.write(text))
    write_json(folder / "metrics.json", {"status": status, "error": line, **({"holder": holder} if holder else {})})
    return status


def _sbatch_refusal(message: str) -> str:
    """One line for sbatch's refusal of the jobs, with the setting that fixes it."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    said = next((line for line in reversed(lines) if "error:" in line), lines[-1] if lines else "refused")
    said = said.split("error:", 1)[-1].strip()
    fix = next((fix for key, fix in SBATCH_FIXES if key in said.lower()), "check the hydra.launcher.* settings")
    return f"sbatch refused the sweep's jobs: {said}; {fix}"
