"""The files of a run directory: writing them so a reader never sees half a file, and reading them
back. The one reader of ``metrics.json`` and ``history.csv``: the summary, the sweeper, the run
record and ``load_run`` all read them through here."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from experiments.errors import UserError

METRICS = "metrics.json"
HISTORY = "history.csv"
# What a run folder holds of its own (and a sweep folder of its own): files that a command such as
# predict must never replace, and folders it must never write into.
RUN_FILES = frozenset(
    {
        "config.yaml",
        METRICS,
        HISTORY,
        "learning_curves.png",
        "forecasts.png",
        "train.log",
        ".lock",
        ".lock.holder.json",
        "multirun.yaml",
        "summary.md",
        "summary.csv",
        "best.yaml",
        "objective.png",
        "optuna.db",
    }
)
RUN_FOLDERS = frozenset({"checkpoints", ".hydra", "tensorboard"})
# The lock of a run folder (one writer at a time, experiments.record), and the record of who holds
# it: written after taking the lock, removed before releasing it. Found with the lock free, it is
# the record of a process that ended without a word (SIGKILL, out of memory, a lost node).
LOCK = ".lock"
HOLDER = ".lock.holder.json"
# The most that a run's text file (metrics.json, history.csv, config.yaml, Hydra's records) is
# read of: a run writes kilobytes, a received folder may hold anything.
MAX_TEXT_BYTES = 256 * 1024 * 1024


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run (or a sweep) of this project: its checkpoints, Hydra's record,
    its metrics or its lock."""
    return any((folder / name).exists() for name in ("checkpoints", ".hydra", METRICS, ".lock", "multirun.yaml"))


def held_by(folder: Path) -> dict[str, Any] | None:
    """Who holds ``folder``'s lock (``.lock``: a run or a sweep writing there now): its holder record
    (``{}`` before it wrote one), or None when no process holds it. Looks without waiting."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:  # no lock file (or a link there): no run or sweep of ours holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when fd closes
    except BlockingIOError:
        return read_json(folder / HOLDER)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write a text file through a temporary file and a rename, so it is either old or complete.
    A failed write (a full disk) removes the temporary file and raises an ``OSError`` that names
    ``path``, not the temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_no_links(run_dir: Path) -> None:
    """Refuse a run folder that holds a symbolic link (a received one, say): a run writes its files
    in place, and a link (``checkpoints/`` to another run's, ``.hydra/config.yaml`` to a file of
    the user's) would carry those writes out of the folder."""
    for folder, names, files in os.walk(run_dir):
        for name in [*names, *files]:
            path = Path(folder) / name
            if path.is_symlink():
                raise UserError(
                    f"{path} is a symbolic link (to {os.readlink(path)}); a run writes only inside its own folder: "
                    "replace the link by a copy of what it points to, or run in a copy of the folder"
                )


def read_text(path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a file of a run or sweep folder, read as data that anyone may have written:
    a regular file (or a link to one) of at most ``limit`` bytes. A named pipe (which would block
    the reader), a device (``/dev/zero`` never ends), a folder or a bigger file raise a
    ``ValueError`` that says what it is, as does text that is not UTF-8; a missing file raises
    ``FileNotFoundError``."""
    # O_NONBLOCK: opening a pipe for reading would wait for a writer; it changes nothing for a file.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a device"
        raise ValueError(f"it is {kind}, not a file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"it holds more than {limit // 2**20} MiB, far more than a run writes")
    return data.decode("utf-8")


def read_yaml_text(path: Path) -> str:
    """The text of a YAML file of a run or sweep folder (:func:`read_text`'s checks), refused with a
    ``ValueError`` when it uses an alias (``*name``): a run writes none, and a crafted one makes a
    small file a huge tree ("billion laughs") once a reader expands it."""
    text = read_text(path)
    try:
        aliases = any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return text  # not YAML: its reader says so
    if aliases:
        raise ValueError("it uses YAML aliases (*name), which a run never writes")
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity; keep them readable
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, lambda handle: json.dump(_finite(data), handle, indent=2))


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config of a run, the one that evaluate and predict rebuild it from."""
    write_atomic(run_dir / "config.yaml", lambda h: h.write(OmegaConf.to_yaml(cfg, resolve=True)))


def read_json(path: Path, strict: bool = False) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` for a file that is missing, unreadable, damaged or
    not an object: a run folder is data that anyone may have written. ``strict``: a damaged file
    is one line naming it (:class:`~experiments.errors.UserError`) instead."""
    try:
        data = json.loads(read_text(path))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        if strict:
            raise _damaged(path, err) from None
        return {}
    if not isinstance(data, dict) and strict:
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object")
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: Path, strict: bool = False) -> dict[str, Any]:
    """A run's ``metrics.json`` (``{}`` when it has none, or a damaged one; ``strict``: see :func:`read_json`)."""
    return read_json(Path(run_dir) / METRICS, strict)


def read_history(run_dir: Path, strict: bool = False) -> list[dict[str, Any]]:
    """A run's ``history.csv``, one dict per epoch with numbers as numbers (``[]`` without one);
    empty cells (an epoch without validation) are left out of their row. ``strict``: a damaged
    file is one line naming it instead of ``[]``."""
    file = Path(run_dir) / HISTORY
    try:
        with io.StringIO(read_text(file), newline="") as handle:
            return [
                {k: _number(v) for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(handle)
            ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, csv.Error) as err:
        if strict:
            raise _damaged(file, err) from None
        return []


def _damaged(path: Path, why: object) -> UserError:
    text = " ".join(str(why).split())[:120]
    return UserError(
        f"{path} is damaged ({text}); it is not as a run writes it: restore it, or move it away to load the run without it"
    )


def _number(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
