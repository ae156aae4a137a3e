"""SIGTERM and Ctrl-C: how a signal stops a run at a point where its state is whole.

- SIGTERM (a scheduler's preemption, ``kill``): inside Lightning's loops its own handler (which
  calls ours) raises at the next batch end, where a checkpoint can be taken; outside them
  :class:`Terminated` is raised at once. Either way it is remembered, so that
  :func:`raise_if_terminated` ends a run that Lightning let finish its loop.
- Ctrl-C (SIGINT) while fitting only marks the interruption; :func:`raise_pending_ctrl_c` raises
  it at the next batch end (:func:`ctrl_c_at_batch_ends`).

A floor of the house: this imports nothing of the package but :mod:`experiments.errors`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from experiments.errors import causes

SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class Terminated(SystemExit):
    """SIGTERM outside Lightning's loops: ends the process with the shell's code for it (143).

    A ``SystemExit``, as Lightning's own ``SIGTERMException`` is, so that no ``except Exception``
    takes a preemption for an error, and a caller that knows nothing of it still exits 143.
    """

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT)


class Interrupted(SystemExit):
    """How the command line ends once a run has recorded a signal and printed its line: the
    shell's exit code for that signal (130, 143)."""


# SIGTERM ------------------------------------------------------------------------------------

_sigterm = {"received": False}


def _on_sigterm(signum: int, frame: Any) -> None:
    _sigterm["received"] = True
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        # Lightning's signal connector called us from its own handler: its loops raise at the next
        # batch end, where the state is whole (and a checkpoint can be taken), so don't raise here.
        return
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside: SIGTERM raises :class:`Terminated` (outside Lightning's loops) or is left to
    Lightning (inside ``fit`` / ``test``, whose handler calls this one), and is remembered either
    way, so that :func:`raise_if_terminated` ends a run that Lightning let finish its loop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm["received"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        # Not carried into the next command run in this process (the Python API, tests).
        _sigterm["received"] = False


def raise_if_terminated() -> None:
    """End the run if SIGTERM arrived while Lightning had no loop left to raise it in."""
    if _sigterm["received"]:
        raise Terminated


def is_sigterm(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is how SIGTERM ended the process: our
    :class:`Terminated`, or Lightning's ``SIGTERMException`` (a ``SystemExit`` with no code, which
    would otherwise pass for a clean exit)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return any(isinstance(e, (Terminated, SIGTERMException)) for e in causes(err))


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """While inside, Ctrl-C and SIGTERM wait: each is remembered and raised as the block ends, to
    the handler it was meant for. For a few writes that a second signal must not cut in half (a
    sweep's worker telling its study how a stopped trial ended). Off the main thread, nothing
    changes (Python runs signal handlers on the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def remember(signum: int, frame: Any) -> None:
        came.append(signum)

    previous = {signum: signal.signal(signum, remember) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if came:
            signal.raise_signal(came[0])


# Ctrl-C -------------------------------------------------------------------------------------

_ctrl_c = {"pending": False}


@contextlib.contextmanager
def ctrl_c_at_batch_ends() -> Iterator[None]:
    """While inside (a fit), Ctrl-C (SIGINT) takes effect at the next batch end instead of wherever
    the interpreter happens to be.

    Python raises KeyboardInterrupt at any bytecode, also inside a finaliser (a weakref callback),
    where it is printed as "Exception ignored" and lost, and the run goes on. Here the signal only
    marks the interruption, and :func:`raise_pending_ctrl_c`, called at every training and
    validation batch end, raises it there, where Lightning's own KeyboardInterrupt handling takes
    over. A second Ctrl-C raises at once. Off the main thread, or where someone else handles
    SIGINT, Python's own handler stays.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def mark(signum: int, frame: Any) -> None:
        if _ctrl_c["pending"]:
            raise KeyboardInterrupt
        _ctrl_c["pending"] = True

    _ctrl_c["pending"] = False
    signal.signal(signal.SIGINT, mark)
    try:
        yield
    finally:
        _ctrl_c["pending"] = False
        signal.signal(signal.SIGINT, signal.default_int_handler)


def raise_pending_ctrl_c() -> None:
    """Raise the Ctrl-C that :func:`ctrl_c_at_batch_ends` held back, if one came."""
    if _ctrl_c["pending"]:
        _ctrl_c["pending"] = False
        raise KeyboardInterrupt
