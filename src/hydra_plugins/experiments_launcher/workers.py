"""The worker processes of a sweep: the parallel launcher's jobs and the Optuna sweeper's workers.

Why not a process pool: a worker that dies (SIGKILL, out of memory) breaks the standard library's
``ProcessPoolExecutor``, which then ends every other worker; and pool workers orphaned by a killed
parent run on. The sweep's process supervises its workers itself, and:

- a worker dies with the process that started it (Linux: ``PR_SET_PDEATHSIG``, through ``prctl``;
  elsewhere a thread that watches its parent), so that a sweep killed with SIGKILL leaves no
  process behind, whatever state its workers are in;
- each worker runs in a process group of its own: Ctrl-C typed in a terminal reaches only the
  sweep's process, which passes it on to each worker once (:class:`PassedOn`). A second Ctrl-C
  stops a run at once instead of at its next batch end, so a worker must not get it both from the
  terminal and from its parent. SIGTERM (a scheduler's preemption, ``kill``) is passed on alike;
- how a worker ended is read from its exit status (:func:`ending`), not guessed, and a trial whose
  process was killed before its run could say how it ended is recorded ``killed`` (:func:`record_lost`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from experiments.runs import METRICS, read_metrics, write_json
from experiments.signals import SIGINT_EXIT, SIGTERM_EXIT, Terminated

_STOPS = (signal.SIGINT, signal.SIGTERM)
# How a run records its ending (experiments.record); a trial folder without one lost its process.
_RECORDED = ("completed", "failed", "interrupted", "pruned", "killed")
# Linux's prctl option: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1
# Files a worker inherits that only its parent may close (the sweep folder's lock).
INHERITED_FDS: set[int] = set()


def start_worker(parent: int) -> None:
    """The first thing a forked worker does: a process group of its own, death with ``parent``,
    and Ctrl-C and SIGTERM taken as a run takes them. The parent forked it with both signals held
    (:meth:`PassedOn.holding`); they are let through once the worker's own handlers are in place."""
    os.setpgid(0, 0)
    for fd in INHERITED_FDS:  # closing a copy leaves the parent's lock as it is
        with contextlib.suppress(OSError):
            os.close(fd)
    INHERITED_FDS.clear()
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:  # no such call: a thread that watches the parent
        threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the call above took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


class PassedOn:
    """While inside: SIGINT and SIGTERM that reach this process are noted (:attr:`received`) and
    passed on, once each time they come, to the workers that ``workers()`` names (their pids)."""

    def __init__(self, workers: Callable[[], Iterable[int]]) -> None:
        self.workers = workers
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PassedOn:
        self._previous = {s: signal.signal(s, self._note) for s in _STOPS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        for pid in list(self.workers()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold SIGINT and SIGTERM back while a worker is forked and registered: one that comes
        meanwhile is then passed on to it too, and the worker never runs this process's handler."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)

    @property
    def stopped_by(self) -> int | None:
        """SIGTERM if it came (a preemption outranks Ctrl-C), else SIGINT if it came, else None."""
        if signal.SIGTERM in self.received:
            return signal.SIGTERM
        return signal.SIGINT if self.received else None


def ending(exitcode: int | None) -> str:
    """How a worker process ended, in words, from its exit status."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = " (out of memory, or kill -9)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{why}"
    if exitcode == SIGINT_EXIT:
        return "stopped by Ctrl-C"
    if exitcode == SIGTERM_EXIT:
        return "stopped by SIGTERM"
    return f"ended with exit code {exitcode}"


def record_lost(run_dir: Path, how: str, pid: int | None, status: str = "killed") -> str | None:
    """Record in ``run_dir`` that its run's process ended ``how`` before the run could record it
    (``killed``; or ``interrupted`` by a signal that came before the run began), as the next process
    to lock the folder would; the line said, or None for a folder that does not exist or whose run
    recorded its ending."""
    if not run_dir.is_dir() or read_metrics(run_dir).get("status") in _RECORDED:
        return None
    line = (
        f"{how}: process {pid} of the sweep ended before its run recorded how; run the sweep's "
        "command again to continue it"
    )
    write_json(run_dir / METRICS, {"status": status, "error": line, "pid": pid})
    return line
