"""How a run ends, in one place: its folder's lock, its status in ``metrics.json``, its exit code and
its one line on stderr.

Every way a training process can end goes through :func:`run_job` (status, exit code, line):

- trained and tested: ``completed``, 0, the result line on stdout;
- a setting, an input file, a NaN loss: ``failed``, 2, ``error: <what, and how to fix it>``;
- a bug: ``failed``, 1, the traceback;
- pruned by a sweep: ``pruned``, 0, ``pruned: ...`` on stdout (the sweep goes on, as it does past
  a failed trial);
- Ctrl-C (SIGINT): ``interrupted``, 130, ``error: interrupted (Ctrl-C) ...; continue with: ... resume=<run dir>``;
- SIGTERM (preemption): ``interrupted``, 143, the same line with ``(SIGTERM)``;
- SIGKILL, out of memory, a lost node: ``killed``, found by the next process that locks the
  folder (a ``resume=``), which says so in one line.

A run folder is written by one process at a time: :class:`RunLock` (``flock`` through the
``filelock`` package, so the kernel drops it with its process, SIGKILL included) is taken before
anything is written into the folder, and a second process is refused in one line naming the holder.
Hydra's own ``.hydra/`` files are therefore written here, after the lock (``hydra.output_subdir`` is
null in ``conf/hydra/default.yaml``), and for a resumed run only once its checkpoint has been
accepted, so that a refused command never rewrites the run it names.

A folder has one run for its whole life (:func:`experiments.run_start.plan_start`): a process that starts in a folder
holding a run of the same experiment continues it from its ``checkpoints/last.ckpt`` (a SLURM
requeue, a resubmitted job, the same ``hydra.run.dir`` again, a sweep run again in its folder) and
counts the restart in ``metrics.json``; a completed one has nothing left to train and keeps its
results; another experiment's run, or a folder that is not a run, is refused before anything is
written.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf, open_dict

from experiments.checkpoints import check_resume_options
from experiments.errors import UserError, describe, interrupted, one_line, printable
from experiments.redact import redact, redacted
from experiments.run_start import (
    BOOKKEEPING,
    CONTINUING,
    LAST,
    Start,
    drop_empty_log,
    override_key,
    plan_start,
    recorded_overrides,
    train_command,
)
from experiments.runs import (
    HOLDER,
    LOCK,
    check_no_links,
    read_json,
    read_metrics,
    save_config,
    write_atomic,
    write_json,
)
from experiments.signals import SIGINT_EXIT, SIGTERM_EXIT, Interrupted, is_sigterm

# How a process ended ------------------------------------------------------------------------


@dataclass
class Ending:
    """What an exception (or none) means for a run: its status, exit code and signal."""

    status: str
    code: int
    signal: str | None = None
    reason: str | None = None


def ending_of(err: BaseException | None) -> Ending:
    """The one mapping from how a job ended to its status and exit code."""
    if err is None:
        return Ending("completed", 0)
    if _is_pruned(err):
        return Ending("pruned", 0, reason=str(err))
    if interrupted(err):
        return Ending("interrupted", SIGINT_EXIT, "SIGINT")
    if is_sigterm(err):
        return Ending("interrupted", SIGTERM_EXIT, "SIGTERM")
    reason = describe(err)
    if reason is not None:  # printed and written: without control characters or passwords
        return Ending("failed", 2, reason=printable(redact(reason)))
    return Ending("failed", 1, reason=redact(f"{type(err).__name__}: {err}"))


def _is_pruned(err: BaseException) -> bool:
    """Whether ``err`` is Optuna's ``TrialPruned``: looked up only where Optuna is already imported
    (a trial of an Optuna sweep), so that a plain run never pays for importing it."""
    optuna_exceptions = sys.modules.get("optuna.exceptions")
    return optuna_exceptions is not None and isinstance(err, optuna_exceptions.TrialPruned)


# The lock -----------------------------------------------------------------------------------


class RunLock:
    """One writer per run folder: ``<run dir>/.lock``, held with ``flock`` for the process's life.

    ``acquire`` refuses (:class:`~experiments.errors.UserError`) when another process holds it,
    naming that process; it returns the holder record of a previous process that died holding it
    (``None`` when the last one released it).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock: Any = None

    def acquire(self) -> dict[str, Any] | None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.run_dir / LOCK), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            holder = self._holder(wait=1.0)
            who = (
                printable(f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}")
                if holder
                else "another process"
            )
            raise UserError(
                f"{self.run_dir} is being written by {who}; wait for it to end (or stop it), or pick another "
                "folder (hydra.run.dir=...)"
            ) from None
        self._lock = lock
        previous = self._holder(wait=0.0)
        write_json(
            self.run_dir / HOLDER,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": redact(" ".join(sys.argv)),  # no password of a storage URL
            },
        )
        return previous

    def release(self, holder: dict[str, Any] | None = None) -> None:
        """Let the folder go; ``holder``: the record of the process that died holding the lock, put
        back for the next process when this one leaves without having recorded its death."""
        if self._lock is None:
            return
        if holder is not None:
            write_json(self.run_dir / HOLDER, holder)
        else:
            (self.run_dir / HOLDER).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def _holder(self, wait: float) -> dict[str, Any] | None:
        # The holder writes its record just after taking the lock: give it that moment.
        deadline = time.monotonic() + wait
        while True:
            holder = read_json(self.run_dir / HOLDER)
            if holder or time.monotonic() >= deadline:
                return holder or None
            time.sleep(0.05)


# The job ------------------------------------------------------------------------------------


def _rank_zero() -> bool:
    """Rank 0, or no distributed run: known from the environment before any trainer exists."""
    return getattr(rank_zero_only, "rank", 0) == 0


class RunRecord:
    """A run folder while one process trains in it: its lock, how the run starts there
    (:func:`plan_start`), Hydra's files, the trainer's progress for the ending line. Made by
    :func:`run_job`; ``train`` calls :meth:`started`, and :meth:`accepted` once training has begun."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.paths.output_dir)
        self.resuming = bool(cfg.get("resume"))
        self.trainer: Any = None
        self.owner = _rank_zero()
        self.lock = RunLock(self.run_dir)
        self.hydra: dict[str, str] | None = None
        self.overrides: list[str] = []
        self.multirun = False
        self.start = Start("fresh")
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.instance().cfg
            self.multirun = HydraConfig.get().mode == RunMode.MULTIRUN
            self.overrides = [str(o) for o in HydraConfig.get().overrides.task]
            # As Hydra writes them (run_job), taken before the run changes its config; the
            # overrides without those that only say how this command continues the run; with the
            # password of any URL (the Optuna storage's) masked.
            overrides = [o for o in self.overrides if override_key(o) not in CONTINUING]
            self.hydra = {
                name: OmegaConf.to_yaml(redacted(OmegaConf.to_container(node)))
                for name, node in (
                    ("config.yaml", copy.deepcopy(cfg)),
                    ("hydra.yaml", hydra_cfg),
                    ("overrides.yaml", OmegaConf.create(overrides)),
                )
            }
        self._hydra_written = False
        self.began = False  # training has begun (accepted)

    @property
    def restarts(self) -> int:
        """How often this run has been continued from its ``last.ckpt`` (requeued, resubmitted, resumed)."""
        return self.start.restarts

    @property
    def starts_over(self) -> bool:
        """Whether an earlier start of this run left files but no checkpoint (its curves are hidden)."""
        return self.start.kind == "again"

    def open(self) -> None:
        """Take the folder (rank 0; other ranks only read it) and decide how the run starts in it,
        or refuse in one line with nothing written."""
        check_resume_options(self.cfg)
        if self.owner and self.hydra is not None and not self.resuming and recorded_overrides(self.run_dir) is None:
            try:
                self._plan()  # a folder that is no run is refused before the lock puts a file into it
            except UserError:
                drop_empty_log(self.run_dir)
                raise
        previous = self.lock.acquire() if self.owner else None
        try:
            if self.owner:
                check_no_links(self.run_dir)  # a received run folder's links would carry writes out of it
            self.start = self._plan() if self.hydra is not None else Start("continue" if self.resuming else "fresh")
        except BaseException:
            self.lock.release(holder=previous)  # the next process records the death it found
            raise
        if self.start.kind == "continue" and not self.resuming:
            with open_dict(self.cfg):  # train() continues it as resume= does
                self.cfg.resume = str(self.run_dir)
        self.resuming = self.start.kind == "continue"
        if not self.owner:
            return
        implicit = not bool(self.overrides and any(override_key(o) == "resume" for o in self.overrides))
        killed = self._record_killed(previous) if previous is not None else None
        # A note quotes the folder's files (how its run ended, its overrides, who held its lock),
        # which anyone may have written: one printable line, without passwords.
        if killed is not None:
            print(f"note: {one_line(redact(killed))}", file=sys.stderr, flush=True)
        elif self.start.note and (implicit or self.start.kind == "done"):
            print(f"note: {one_line(redact(self.start.note))}", file=sys.stderr, flush=True)
        if self.start.kind in ("fresh", "again"):
            self._write_hydra_files()

    def _plan(self) -> Start:
        return plan_start(
            self.run_dir,
            self.overrides,
            self.resuming,
            bool(self.cfg.get("resume_with_changes")),
            self.multirun,
        )

    def started(self, trainer: Any) -> None:
        """The run's checks passed and it is about to train (its files are written by then, or by
        :meth:`accepted` for a run continued with other overrides)."""
        self.trainer = trainer

    def accepted(self, cfg: Any) -> None:
        """Training has begun (or had nothing left to do): Lightning restored the checkpoint of a
        continued run whole. A run continued with other overrides (``resume_with_changes=true``)
        records them now, so that a refused resume never rewrites the run it names."""
        self.began = True
        if self.owner and self.start.changed and not self._hydra_written:
            self._write_hydra_files()
            save_config(cfg, self.run_dir)

    def close(self) -> None:
        self.lock.release()

    def _write_hydra_files(self) -> None:
        if self.hydra is None or self._hydra_written:
            return
        folder = self.run_dir / ".hydra"
        for name, text in self.hydra.items():
            # Whole or not at all: the other ranks of a distributed run read overrides.yaml meanwhile.
            write_atomic(folder / name, functools.partial(_write_text, text=text))  # a link is replaced, not followed
        self._hydra_written = True

    def _record_killed(self, previous: dict[str, Any]) -> str:
        """Record, and return the line saying, that the folder's previous process died holding it."""
        line = printable(
            f"the previous process of {self.run_dir} (pid {previous.get('pid')} on {previous.get('host')}, since "
            f"{previous.get('since')}) ended without recording how: killed (SIGKILL, out of memory or a lost node)"
        )
        metrics = read_metrics(self.run_dir)
        if metrics.get("status") not in ("completed", "failed", "interrupted", "pruned"):
            write_json(
                self.run_dir / "metrics.json",
                {
                    "status": "killed",
                    "signal": "SIGKILL",
                    "error": line,
                    "pid": previous.get("pid"),
                    "host": previous.get("host"),
                    "since": previous.get("since"),
                    "restarts": self.restarts - (self.start.kind == "continue"),
                },
            )
        if self.start.kind == "continue" and (self.run_dir / LAST).is_file():
            return f"{line}; continuing from its {LAST} (restart {self.restarts})"
        if self.start.kind == "again":
            return f"{line}; it kept no checkpoint: starting it again from the beginning"
        return line

    # The ending line ------------------------------------------------------------------------

    def resume_command(self) -> str:
        return train_command(self.overrides, self.run_dir)

    def interrupted_line(self, signal_name: str) -> str:
        what = "Ctrl-C" if signal_name == "SIGINT" else signal_name
        trainer = self.trainer
        where = ""
        if trainer is not None:
            where = f" at step {trainer.global_step} (epoch {trainer.current_epoch + 1})"
        last = self.run_dir / LAST
        if last.is_file():
            step = _checkpoint_step(last)
            kept = f"; checkpoints/last.ckpt holds step {step}" if step is not None else ""
            return f"interrupted ({what}){where}{kept}; continue with: {self.resume_command()}"
        return f"interrupted ({what}){where} before any checkpoint was written; run the same command again"


def _write_text(handle: Any, text: str) -> None:
    handle.write(text)


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step"))
    except Exception:  # noqa: BLE001 - the line is still right without the step
        return None


def _discard_or_mark_failed(record: RunRecord, err: BaseException, reason: str) -> None:
    """Leave nothing that looks like a result: an untouched single run goes, anything else is marked."""
    run_dir = record.run_dir
    if record.resuming and not record.began:
        return  # a resume refused before it started (by us or by Lightning) leaves the run as it was
    # Only bookkeeping: the run never started, so there is nothing to keep. Never delete a
    # directory that holds anything else (hydra.run.dir may point at a user's folder).
    untouched = run_dir.is_dir() and all(p.name in BOOKKEEPING for p in run_dir.iterdir())
    if not record.multirun and untouched and record.trainer is None:
        record.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    elif run_dir.is_dir():
        write_json(run_dir / "metrics.json", {"status": "failed", "error": reason, "restarts": record.restarts})


def _log_traceback(err: BaseException, run_dir: Path) -> str:
    """Write the traceback of a trial's unexpected error into the trial's own log file (Hydra's
    ``train.log``), not onto the terminal, where every failing trial of a sweep left a wall of
    them; `` (traceback in <log>)`` for its line. Without a log file of the run, the terminal gets it."""
    logger = logging.getLogger("experiments.train")
    files = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir.resolve()
    ]
    if not files:
        logger.error("trial failed; the sweep goes on", exc_info=err)
        return ""
    entry = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        0,
        "trial failed; the sweep goes on",
        (),
        (type(err), err, err.__traceback__),
    )
    for handler in files:
        handler.handle(entry)
    return f" (traceback in {files[0].baseFilename})"


def run_job(cfg: Any, job: Callable[[RunRecord], dict[str, Any]], cli: bool = True) -> dict[str, Any] | None:
    """Run one training job in its folder and turn however it ends into the run's status.

    Returns the job's metrics; ``None`` for a sweep trial that was pruned or failed (recorded, and
    the sweep goes on). A single run that failed raises its error (one line and exit code 2, or a
    traceback); an interrupted one raises :class:`Interrupted` (``cli``) or the interruption
    itself (the Python API), after its status and line are recorded.
    """
    record = RunRecord(cfg)
    try:
        record.open()
    except BaseException:
        record.close()
        raise
    if record.start.kind == "done":  # completed in this folder before: its results stay
        record.close()
        return read_metrics(record.run_dir)
    try:
        metrics = job(record)
    except BaseException as err:  # every ending is recorded; none is swallowed (see below)
        ending = ending_of(err)
        run_dir = record.run_dir
        if not record.owner:
            if ending.status == "interrupted" and cli:
                raise Interrupted(ending.code) from err  # rank 0 says it, once
            raise
        if ending.status == "pruned":
            write_json(
                run_dir / "metrics.json", {"status": "pruned", "error": ending.reason, "restarts": record.restarts}
            )
            print(f"pruned: {ending.reason} | {run_dir}")
            return None
        if ending.status == "interrupted":
            line = record.interrupted_line(ending.signal or "SIGINT")
            write_json(
                run_dir / "metrics.json",
                {
                    "status": "interrupted",
                    "signal": ending.signal,
                    "error": line,
                    "step": record.trainer.global_step if record.trainer else None,
                    "restarts": record.restarts,
                },
            )
            if not cli or record.multirun:
                raise  # a sweep's interruption ends the sweep; run_cli says so once
            print(f"error: {line}", file=sys.stderr, flush=True)
            raise Interrupted(ending.code) from err
        _discard_or_mark_failed(record, err, ending.reason or "")
        if not record.multirun or not isinstance(err, Exception):
            raise
        where = ""
        if describe(err) is None:  # a bug, not a setting: its traceback goes to the trial's log, not the terminal
            where = _log_traceback(err, run_dir)
        print(f"failed: {one_line(ending.reason or '')}{where} | {run_dir}")
        return None
    finally:
        record.close()
    if metrics["status"] == "failed":
        if not record.multirun:
            raise UserError(f"{metrics['error']} (run directory {record.run_dir})")
        print(f"failed: {one_line(metrics['error'])} | {record.run_dir}")
        return None
    return metrics
