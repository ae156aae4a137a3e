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
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shlex
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
from omegaconf import OmegaConf

from experiments.callbacks import NonFiniteError
from experiments.errors import UserError, describe, interrupted, one_line, printable
from experiments.redact import redact, redacted
from experiments.runs import check_no_links, read_json, read_metrics, write_atomic, write_json
from experiments.signals import SIGINT_EXIT, SIGTERM_EXIT, Interrupted, is_sigterm

LOCK = ".lock"
# Who holds the lock: written after taking it, removed before releasing it. Found with the lock
# free, it is the record of a process that ended without a word (SIGKILL, out of memory).
HOLDER = ".lock.holder.json"
# Files a run folder holds before its run has written anything of its own.
BOOKKEEPING = {".hydra", "train.log", LOCK, HOLDER}

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

    def release(self) -> None:
        if self._lock is None:
            return
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
    """A run folder while one process trains in it: its lock, Hydra's files, the trainer's
    progress for the ending line. Made by :func:`run_job`; ``train`` calls :meth:`started`."""

    def __init__(self, cfg: Any) -> None:
        self.run_dir = Path(cfg.paths.output_dir)
        self.resuming = bool(cfg.get("resume"))
        self.trainer: Any = None
        self.owner = _rank_zero()
        self.lock = RunLock(self.run_dir)
        self.hydra: dict[str, str] | None = None
        self.overrides: list[str] = []
        self.multirun = False
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.instance().cfg
            self.multirun = HydraConfig.get().mode == RunMode.MULTIRUN
            self.overrides = [str(o) for o in HydraConfig.get().overrides.task]
            # As Hydra writes them (run_job), taken before the run changes its config; with the
            # password of any URL (the Optuna storage's) masked.
            self.hydra = {
                name: OmegaConf.to_yaml(redacted(OmegaConf.to_container(node)))
                for name, node in (
                    ("config.yaml", copy.deepcopy(cfg)),
                    ("hydra.yaml", hydra_cfg),
                    ("overrides.yaml", HydraConfig.get().overrides.task),
                )
            }
        self._hydra_written = False

    def open(self) -> None:
        if not self.owner:
            return
        previous = self.lock.acquire()
        check_no_links(self.run_dir)  # a received run folder's links would carry writes out of it
        if previous is not None:
            self._record_killed(previous)
        if not self.resuming:
            self._write_hydra_files()

    def started(self, trainer: Any) -> None:
        """The run's checks passed and it is about to train: the folder is this command's now."""
        self.trainer = trainer
        if self.owner:
            self._write_hydra_files()

    def close(self) -> None:
        self.lock.release()

    def _write_hydra_files(self) -> None:
        if self.hydra is None or self._hydra_written:
            return
        folder = self.run_dir / ".hydra"
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.hydra.items():
            write_atomic(folder / name, functools.partial(_write_text, text))  # a link is replaced, not followed
        self._hydra_written = True

    def _record_killed(self, previous: dict[str, Any]) -> None:
        last = self.run_dir / "checkpoints" / "last.ckpt"
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
                },
            )
        what = f"; continuing from its {last.relative_to(self.run_dir)}" if self.resuming and last.is_file() else ""
        print(f"note: {line}{what}", file=sys.stderr, flush=True)

    # The ending line ------------------------------------------------------------------------

    def resume_command(self) -> str:
        kept = [o for o in self.overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
        return " ".join(
            ["python -m experiments.train", *map(shlex.quote, kept), f"resume={shlex.quote(str(self.run_dir))}"]
        )

    def interrupted_line(self, signal_name: str) -> str:
        what = "Ctrl-C" if signal_name == "SIGINT" else signal_name
        trainer = self.trainer
        where = ""
        if trainer is not None:
            where = f" at step {trainer.global_step} (epoch {trainer.current_epoch + 1})"
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            step = _checkpoint_step(last)
            kept = f"; checkpoints/last.ckpt holds step {step}" if step is not None else ""
            return f"interrupted ({what}){where}{kept}; continue with: {self.resume_command()}"
        return f"interrupted ({what}){where} before any checkpoint was written; run the same command again"


def _write_text(text: str, handle: Any) -> None:
    handle.write(text)


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step"))
    except Exception:  # noqa: BLE001 - the line is still right without the step
        return None


def _discard_or_mark_failed(record: RunRecord, err: BaseException, reason: str) -> None:
    """Leave nothing that looks like a result: an untouched single run goes, anything else is marked."""
    run_dir = record.run_dir
    if record.resuming and isinstance(err, UserError) and not isinstance(err, NonFiniteError):
        return  # a resume refused before it started leaves the run it named as it was
    # Only bookkeeping: the run never started, so there is nothing to keep. Never delete a
    # directory that holds anything else (hydra.run.dir may point at a user's folder).
    untouched = run_dir.is_dir() and all(p.name in BOOKKEEPING for p in run_dir.iterdir())
    if not record.multirun and untouched and record.trainer is None:
        record.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    elif run_dir.is_dir():
        write_json(run_dir / "metrics.json", {"status": "failed", "error": reason})


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
    try:
        metrics = job(record)
    except BaseException as err:  # every ending is recorded; none is swallowed (see below)
        ending = ending_of(err)
        run_dir = record.run_dir
        if not record.owner:
            raise
        if ending.status == "pruned":
            write_json(run_dir / "metrics.json", {"status": "pruned", "error": ending.reason})
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
                },
            )
            if not cli or record.multirun:
                raise  # a sweep's interruption ends the sweep; run_cli says so once
            print(f"error: {line}", file=sys.stderr, flush=True)
            raise Interrupted(ending.code) from err
        _discard_or_mark_failed(record, err, ending.reason or "")
        if not record.multirun or not isinstance(err, Exception):
            raise
        if describe(err) is None:  # a bug, not a setting: keep its traceback in the run's log
            logging.getLogger("experiments.train").exception("trial failed; the sweep goes on")
        print(f"failed: {one_line(ending.reason or '')} | {run_dir}")
        return None
    finally:
        record.close()
    if metrics["status"] == "failed":
        if not record.multirun:
            raise UserError(f"{metrics['error']} (run directory {record.run_dir})")
        print(f"failed: {one_line(metrics['error'])} | {record.run_dir}")
        return None
    return metrics
