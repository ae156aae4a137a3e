"""The files of a run directory: reading them back and writing them so a reader never sees half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.errors import UserError


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


def run_dir_of(ckpt_path: Path) -> Path:
    """A checkpoint lives in ``<run>/checkpoints/``."""
    return ckpt_path.resolve().parent.parent


def load_run_config(ckpt_path: str | Path) -> tuple[Path, DictConfig]:
    """The checkpoint's path and the config of the run that wrote it, with clear errors if absent."""
    ckpt = Path(ckpt_path).expanduser()
    if not ckpt.is_file():
        raise UserError(
            f"checkpoint not found: {ckpt}; pass ckpt_path=<run dir>/checkpoints/best.ckpt of a finished run"
        )
    config = run_dir_of(ckpt) / "config.yaml"
    if not config.is_file():
        raise UserError(
            f"no config.yaml in {config.parent} for checkpoint {ckpt}; "
            "keep the checkpoint in the checkpoints/ folder of its run directory"
        )
    return ckpt, OmegaConf.load(config)  # type: ignore[return-value]
