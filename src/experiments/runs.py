"""The files of a run directory: writing them so a reader never sees half a file, and reading them
back. The one reader of ``metrics.json`` and ``history.csv``: the summary, the sweeper, the run
record and ``load_run`` all read them through here."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

METRICS = "metrics.json"
HISTORY = "history.csv"
# The lock of a run folder (one writer at a time, experiments.record), and the record of who holds
# it: written after taking the lock, removed before releasing it. Found with the lock free, it is
# the record of a process that ended without a word (SIGKILL, out of memory, a lost node).
LOCK = ".lock"
HOLDER = ".lock.holder.json"


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write a text file through a temporary file and a rename, so it is either old or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` for a file that is missing, unreadable, damaged or
    not an object: a run folder is data that anyone may have written."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's ``metrics.json`` (``{}`` when it has none, or a damaged one)."""
    return read_json(Path(run_dir) / METRICS)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """A run's ``history.csv``, one dict per epoch with numbers as numbers (``[]`` without one);
    empty cells (an epoch without validation) are left out of their row."""
    file = Path(run_dir) / HISTORY
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            return [
                {k: _number(v) for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(handle)
            ]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _number(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
