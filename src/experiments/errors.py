"""The one error type for mistakes a user can fix, and its one-line rendering on the command line."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any


class UserError(Exception):
    """A mistake in a config, a command line or an input file: reported as one line, exit code 2."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(err: BaseException) -> str | None:
    """One line for an error caused by user input, or ``None`` for a genuine bug (keep the traceback)."""
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, InstantiationException):
        inner = err.__cause__ or err.__context__
        full_key = re.search(r"full_key: (\S+)", str(err))
        where = f"{full_key.group(1)}: " if full_key else ""
        if isinstance(inner, (ValueError, TypeError, UserError, MisconfigurationException)):
            return f"{where}{_first_line(inner)}"
        if isinstance(inner, ImportError) or "Error locating target" in str(err):
            return f"{where}{_first_line(err)}"
        return None
    # A UserError raised inside a resolver or a constructor reaches here wrapped by OmegaConf or Hydra.
    cause = err.__cause__ or err.__context__
    while cause is not None:
        if isinstance(cause, UserError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", None) or "a value"
        return f"{key} is required: pass {key}=..."
    if isinstance(err, MisconfigurationException):  # Lightning's word for a bad setting
        return _first_line(err)
    # A file that cannot be written, also where it is found inside another error: Python's logging
    # reports a run folder that is read-only as "Unable to configure handler 'file'" (a ValueError)
    # from the OSError of its train.log.
    os_error = next((e for e in _chain(err) if isinstance(e, OSError) and e.filename), None)
    if os_error is not None:
        return (
            f"cannot use {os_error.filename}: {os_error.strerror or os_error}; check that the path exists "
            "and is writable (for the run directory: hydra.run.dir=<writable folder>)"
        )
    if isinstance(err, MissingConfigException) and err.options is not None:
        missing = re.search(r"Could not find '([^']+)/([^'/]+)'", str(err))
        if missing:
            group, name = missing.groups()
            return (
                f"unknown {group} {name!r}{suggest(name, err.options)}; choose one of: {', '.join(sorted(err.options))}"
            )
    if isinstance(err, ConfigCompositionException):
        override = re.search(r"Could not override '([^']+)'", str(err))
        if override and "not in struct" in str(err.__cause__ or ""):
            unknown: str = override.group(1)
            # A new top-level key is read by nothing (and refused); a new option of a node may be.
            new = f", or add a new key with +{unknown}=..." if "." in unknown else ""
            return f"unknown key {unknown!r}{_suggest_key(err, unknown)}; check the spelling{new}"
        match = re.search(r"Multiple values for ([\w/]+)\. To override a value use 'override \1: (\S+)'", str(err))
        if match:
            group, option = match.groups()
            return (
                f"+{group}={option} adds a second {group} option, and {group} already has one; list them "
                f"instead, e.g. {group}=[default,{option}]"
            )
    if isinstance(err, (ConfigCompositionException, OverrideParseException, OmegaConfBaseException)):
        return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return None


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, innermost last."""
    found: list[BaseException] = []
    while err is not None and err not in found:
        found.append(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return found


INTERRUPTED = (
    "interrupted (Ctrl-C); continue a run with resume=latest (or resume=<run dir>), "
    "an Optuna sweep by running the same command again"
)


TERMINATED = (
    "interrupted (SIGTERM); continue a run with resume=latest (or resume=<run dir>), "
    "an Optuna sweep by running the same command again"
)


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is Ctrl-C, or how Lightning ends a process after it (SystemExit from a
    KeyboardInterrupt)."""
    return any(isinstance(e, KeyboardInterrupt) for e in _chain(err))


def _suggest_key(err: BaseException, key: str) -> str:
    cause = err.__cause__
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = getattr(cause, "parent_node", None)
    if node is None:
        return ""
    try:
        keys = [f"{parent}.{k}" if parent else str(k) for k in node.keys()]
    except Exception:  # noqa: BLE001 - a suggestion is optional, the error line is not
        return ""
    return suggest(key, keys)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def exit_on_user_error(message: str) -> None:
    """Print ``error: message`` as the one line on stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def user_errors_exit(task_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra task function so that a user error exits at once with one line.

    Exiting inside the task function keeps Hydra from adding its own 'Error executing job' line.
    """

    @functools.wraps(task_function)
    def wrapper(cfg: Any) -> Any:
        try:
            return task_function(cfg)
        except Exception as err:
            message = None if _wants_trace() else describe(err)
            if message is None:
                raise
            exit_on_user_error(message)

    return wrapper


def _wants_trace() -> bool:
    return os.environ.get("EXPERIMENTS_FULL_ERROR") == "1"


def run_cli(hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function and turn user errors into one line on stderr and exit code 2.

    Hydra prints its own multi-line report and exits 1; setting HYDRA_FULL_ERROR makes it re-raise
    instead, so the error can be rendered here. A user who set HYDRA_FULL_ERROR=1 gets the full trace.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        os.environ["EXPERIMENTS_FULL_ERROR"] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _quiet_library_chatter()
    from experiments.record import Interrupted, is_sigterm, sigterm_raises

    try:
        with sigterm_raises():
            hydra_main()
    except Interrupted:
        raise  # a run recorded its interruption and printed its line (how to resume it)
    except (KeyboardInterrupt, SystemExit) as err:
        if _wants_trace():
            raise
        if is_sigterm(err):
            # SIGTERM (preemption) outside a single run: a sweep, or before the run began.
            print(f"error: {TERMINATED}", file=sys.stderr, flush=True)
            sys.exit(143)
        if not interrupted(err):
            raise
        # Ctrl-C, in this process or in a sweep's workers: one line, and the shell's code for SIGINT.
        print(f"error: {INTERRUPTED}", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as err:
        message = None if _wants_trace() else describe(err)
        if message is None:
            raise
        exit_on_user_error(message)


def _quiet_library_chatter() -> None:
    """Keep two lines out of every run's output that tell the user nothing they can act on.

    Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates (a warning with Lightning's
    file path in it, printed by every run), and advertises its cloud logger whenever no LitLogger is
    configured. Done for the command-line tools only: a library user's own settings stay theirs.
    """
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)  # once, however often called
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(_not_an_advert)


def _not_an_advert(record: logging.LogRecord) -> bool:
    # Lightning's "Received SIGTERM: 15" too: the run's own line says what happened and what to do.
    text = str(record.msg)
    return not (text.startswith("\N{ELECTRIC LIGHT BULB} Tip:") or "Received SIGTERM" in text)
