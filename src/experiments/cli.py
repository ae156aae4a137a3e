"""The command line's wrapper: one ``error:`` line and an exit code instead of a traceback.

Exit codes: 0 done; 2 a mistake the user can fix (one line naming it and the fix); 1 a bug (its
traceback); 3 a multirun that ran to its end but not every trial completed (its summary written;
one line saying how many did not, and where the summary is); 130 Ctrl-C; 143 SIGTERM.
``HYDRA_FULL_ERROR=1`` (or ``EXPERIMENTS_FULL_ERROR=1``) keeps the full traceback of a user error too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from experiments.errors import SweepIncomplete, describe, interrupted, printable
from experiments.redact import redact
from experiments.signals import SIGINT_EXIT, SIGTERM_EXIT, Interrupted, is_sigterm, sigterm_raises

INTERRUPTED = (
    "interrupted (Ctrl-C); continue a run with resume=latest (or resume=<run dir>), "
    "an Optuna sweep by running the same command again"
)
TERMINATED = (
    "interrupted (SIGTERM); continue a run with resume=latest (or resume=<run dir>), "
    "an Optuna sweep by running the same command again"
)


def exit_on_user_error(message: str) -> None:
    """Print ``error: message`` as the one line on stderr and exit with code 2: without control
    characters (the message may quote a file someone else wrote) and without passwords."""
    print(f"error: {printable(redact(message))}", file=sys.stderr, flush=True)
    sys.exit(2)


def wants_trace() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1`` or ``EXPERIMENTS_FULL_ERROR=1``)."""
    return os.environ.get("EXPERIMENTS_FULL_ERROR") == "1"


def user_errors_exit(task_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra task function so that a user error exits at once with one line.

    Exiting inside the task function keeps Hydra from adding its own 'Error executing job' line.
    """

    @functools.wraps(task_function)
    def wrapper(cfg: Any) -> Any:
        try:
            return task_function(cfg)
        except Exception as err:
            message = None if wants_trace() else describe(err)
            if message is None:
                raise
            exit_on_user_error(message)

    return wrapper


def run_cli(hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function and turn user errors into one line on stderr and exit code 2.

    Hydra prints its own multi-line report and exits 1; setting HYDRA_FULL_ERROR makes it re-raise
    instead, so the error can be rendered here. A user who set HYDRA_FULL_ERROR=1 gets the full trace.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        os.environ["EXPERIMENTS_FULL_ERROR"] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    quiet_library_chatter()
    try:
        with sigterm_raises():
            hydra_main()
    except Interrupted:
        raise  # a run recorded its interruption and printed its line (how to resume it)
    except SweepIncomplete as err:
        # A multirun that ran to its end with trials that did not complete: its summary is written.
        print(f"error: {err.line}", file=sys.stderr, flush=True)
        sys.exit(err.code)
    except (KeyboardInterrupt, SystemExit) as err:
        if wants_trace():
            raise
        if is_sigterm(err):
            # SIGTERM (preemption) outside a single run: a sweep, or before the run began.
            print(f"error: {TERMINATED}", file=sys.stderr, flush=True)
            sys.exit(SIGTERM_EXIT)
        if not interrupted(err):
            raise
        # Ctrl-C, in this process or in a sweep's workers: one line, and the shell's code for SIGINT.
        print(f"error: {INTERRUPTED}", file=sys.stderr, flush=True)
        sys.exit(SIGINT_EXIT)
    except Exception as err:
        message = None if wants_trace() else describe(err)
        if message is None:
            raise
        exit_on_user_error(message)


# Library chatter --------------------------------------------------------------------------------

# Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates (a warning with Lightning's file
# path in it, printed by every run).
_TREESPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# Loggers whose records are filtered by _not_an_advert.
_CHATTY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.trainer.connectors.signal_connector",
)


def quiet_library_chatter() -> None:
    """Keep lines out of every run's output that tell the user nothing they can act on, for the
    rest of the process: done for the command-line tools only (a library user's own settings stay
    theirs; the Python API uses :func:`library_chatter_quieted`)."""
    warnings.filterwarnings("ignore", message=_TREESPEC_WARNING)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).addFilter(_not_an_advert)  # once, however often called


@contextlib.contextmanager
def library_chatter_quieted() -> Iterator[None]:
    """:func:`quiet_library_chatter` while inside, and the caller's settings as they were after."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TREESPEC_WARNING)
        added = [logger for logger in loggers if _not_an_advert not in logger.filters]
        for logger in added:
            logger.addFilter(_not_an_advert)
        try:
            yield
        finally:
            for logger in added:
                logger.removeFilter(_not_an_advert)


def _not_an_advert(record: logging.LogRecord) -> bool:
    """Lightning's advert for its cloud logger (whenever no LitLogger is configured) and its
    "Received SIGTERM: 15" (the run's own line says what happened and what to do)."""
    text = str(record.msg)
    return not (text.startswith("\N{ELECTRIC LIGHT BULB} Tip:") or "Received SIGTERM" in text)
