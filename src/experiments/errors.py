"""The one error type for mistakes a user can fix, and how any error becomes one line.

The bottom of the house: nothing here imports another module of this package. The command line's
use of it (exit codes, the ``error:`` line) is :mod:`experiments.cli`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in a config, a command line or an input file: reported as one line, exit code 2."""


# How a multirun ends when it ran to its end but not every trial completed (docs/runs.md).
INCOMPLETE_EXIT = 3


class SweepIncomplete(SystemExit):
    """A multirun that ran to its end with trials that did not complete (failed, interrupted,
    killed, lost), or whose study's database went away: exit code 3, and ``line`` as the one
    ``error:`` line. Raised once the sweep's summary is written (``experiments.summarize``), turned
    into that line by the command line's wrapper (``experiments.cli``).

    A ``SystemExit``, so that no ``except Exception`` on its way (Hydra turns an exception of a
    callback into a warning) takes it for an error, and a caller that knows nothing of it still
    exits with its code."""

    def __init__(self, line: str) -> None:
        super().__init__(INCOMPLETE_EXIT)
        self.line = line


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice (case aside), or '' when nothing is close."""
    options = list(choices)
    exact = [c for c in options if c.lower() == name.lower() and c != name]
    close = exact or difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def causes(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, innermost last (each once)."""
    found: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is Ctrl-C, or how Lightning ends a process after it (SystemExit from a
    KeyboardInterrupt)."""
    return any(isinstance(e, KeyboardInterrupt) for e in causes(err))


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def printable(text: str) -> str:
    """``text`` without control characters (ANSI escapes included), for a line about a file
    someone else may have written: what reaches the terminal is only what it says."""
    # Whole escape sequences first (CSI, and OSC up to its BEL or ST), then any control character left.
    return re.sub(
        r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text
    )


def one_line(text: str) -> str:
    """``text`` as one printable line: its lines joined with " / ", control characters removed
    (a reason from an exception or a file may hold several lines, or escape sequences)."""
    return " / ".join(line.strip() for line in printable(str(text)).splitlines() if line.strip())


def describe(err: BaseException) -> str | None:
    """One line for an error caused by user input, or ``None`` for a genuine bug (keep the traceback)."""
    # Third-party exception types, imported here so that this floor of the package loads no library.
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
    memory = memory_problem(err)
    if memory is not None:
        return memory
    if isinstance(err, InstantiationException):
        inner = err.__cause__ or err.__context__
        full_key = re.search(r"full_key: (\S+)", str(err))
        where = f"{full_key.group(1)}: " if full_key else ""
        if isinstance(inner, (ValueError, TypeError, UserError, MisconfigurationException)):
            return f"{where}{first_line(inner)}"
        if "Error locating target" in str(err):
            return f"{where}{first_line(err)}"
        if isinstance(inner, ImportError):  # raised by the target itself: a package it needs is missing
            return f"{where}{first_line(inner)}"
        return None
    # A UserError raised inside a resolver or a constructor reaches here wrapped by OmegaConf or Hydra.
    wrapped = next((e for e in causes(err)[1:] if isinstance(e, UserError)), None)
    if wrapped is not None:
        return str(wrapped)
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", None) or "a value"
        return f"{key} is required: pass {key}=..."
    if isinstance(err, MisconfigurationException):  # Lightning's word for a bad setting
        return first_line(err)
    disk = disk_problem(err)
    if disk is not None:
        return disk
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


def memory_problem(err: BaseException) -> str | None:
    """One line for an allocation that failed (a model or a batch too large for this machine's
    memory), also where Hydra wraps it in an InstantiationException: torch reports it as a
    RuntimeError ("can't allocate memory") or its OutOfMemoryError, Python as a MemoryError."""
    for e in causes(err):
        text = str(e)
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text:
            size = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [KMGTP]iB)", text)
            what = f" ({_bytes(size.group(1))} asked for)" if size else ""
            where = re.search(r"full_key: (\S+)", str(err))
            return (
                f"{where.group(1) + ': ' if where else ''}out of memory{what}; make the model or the batch smaller "
                "(model.hidden, data.batch_size), or run where there is more memory"
            )
    return None


def _bytes(count: str) -> str:
    if not count.isdigit():
        return count
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.3g} {unit}"
        value /= 1000
    return count


def disk_problem(err: BaseException) -> str | None:
    """One line for a file that could not be written or read (a full or read-only disk, a missing
    folder), also where it is found inside another error: Python's logging reports a read-only run
    folder as "Unable to configure handler 'file'" (a ValueError) from the OSError of its train.log,
    and torch's writer reports a full disk as a RuntimeError about its zip file."""
    import errno

    chain = causes(err)
    # A full disk fails every write after the first (the files written on the way out): the
    # first one that failed is the one to name.
    full = [e for e in chain if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)]
    if full:
        first = next((f for f in reversed(full) if f.filename), full[-1])
        what = f"cannot write {first.filename}" if first.filename else "cannot write"
        return (
            f"{what}: the disk{_mount_of(first.filename)} is full; free some space (or write elsewhere: "
            "hydra.run.dir=<folder>)"
        )
    for e in chain:
        if isinstance(e, OSError) and (e.filename or e.errno == errno.EROFS):
            what = f"cannot use {e.filename}" if e.filename else "cannot write"
            return (
                f"{what}: {e.strerror or e}; check that the path exists and is writable "
                "(for the run directory: hydra.run.dir=<writable folder>)"
            )
        if isinstance(e, RuntimeError) and re.search(r"file write failed|unexpected pos", str(e)):
            return "cannot write a file: the disk is full or went away; free some space and resume the run"
    return None


def _mount_of(filename: object) -> str:
    """' of /mount/point' for the file system that holds ``filename`` ('' when unknown)."""
    import os

    if not isinstance(filename, str) or not filename:
        return ""
    folder = os.path.dirname(os.path.abspath(filename))
    while folder != os.path.dirname(folder) and not os.path.ismount(folder):
        folder = os.path.dirname(folder)
    return f" of {folder}"


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
