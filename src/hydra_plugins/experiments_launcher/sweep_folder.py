"""A sweep's folder: one sweep writes into it at a time, and a grid sweep only into its own.

Hydra writes ``<sweep dir>/multirun.yaml`` before any job runs, so a second sweep pointed at the
folder of a live one (or of another, finished, grid sweep) would rewrite it even though each of its
trials is then refused by the trial folder's lock. Both plugins therefore take the folder first
(:class:`SweepLock`): ``flock`` on ``<sweep dir>/.lock``, which the kernel drops with the process
(SIGKILL included); a second sweep is refused in one line naming the holder, before anything is
written. A grid sweep's folder that holds another sweep's ``multirun.yaml`` is refused too
(:func:`refuse_another_sweep`); the same command again continues the sweep in it (each trial from
what its folder holds: docs/runs.md). Our own few lines rather than ``filelock``: a forked worker
must be able to close its copy of the lock's file without unlocking it for its parent.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from experiments.errors import UserError, printable
from experiments.redact import redact
from experiments.runs import read_json, write_json
from hydra_plugins.experiments_launcher.workers import INHERITED_FDS

LOCK = ".lock"
HOLDER = ".lock.holder.json"


class SweepLock:
    """``<sweep dir>/.lock``, held by the sweep's process for its life."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.fd: int | None = None
        self.pid = os.getpid()

    def acquire(self) -> SweepLock:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.sweep_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_json(self.sweep_dir / HOLDER)
            who = (
                f"the sweep of process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
                if holder
                else "another sweep"
            )
            raise UserError(
                f"{self.sweep_dir} is in use by {printable(who)}; wait for it to end (or stop it), or pick "
                "another folder (hydra.sweep.dir=...)"
            ) from None
        self.fd, self.pid = fd, os.getpid()
        INHERITED_FDS.add(fd)
        write_json(
            self.sweep_dir / HOLDER,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": redact(" ".join(sys.argv)),  # no password of a storage URL (it stays after a kill)
            },
        )
        return self

    def release(self) -> None:
        if self.fd is None or os.getpid() != self.pid:  # a forked worker's copy: its parent's lock
            return
        (self.sweep_dir / HOLDER).unlink(missing_ok=True)
        INHERITED_FDS.discard(self.fd)
        os.close(self.fd)  # the last copy of the file: the kernel drops the lock
        self.fd = None

    def __del__(self) -> None:
        self.release()


def refuse_another_sweep(sweep_dir: Path, config: Any) -> None:
    """Refuse (one line, nothing written) a grid sweep into a folder whose ``multirun.yaml`` is that
    of a sweep with other overrides: its trial ``N`` would be another setting than this one's."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return
    mine = [str(o) for o in config.hydra.overrides.task]
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
        theirs = stored["hydra"]["overrides"]["task"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
        theirs = None
    if theirs == mine:
        return
    shown = " ".join(printable(str(o)) for o in theirs) if isinstance(theirs, list) else "unreadable overrides"
    raise UserError(
        f"{sweep_dir} holds another sweep ({shown}); nothing was written there: pick a new folder "
        f"(hydra.sweep.dir=<new folder>), or run that sweep's own command again to continue it"
    )
