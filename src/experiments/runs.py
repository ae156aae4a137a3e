"""The files of a run directory: reading them back and writing them so a reader never sees half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.errors import UserError

# What a config that arrives as data (a run folder's config.yaml) may build: classes, never
# functions, and only under these prefixes. A prefix is checked as text before anything is
# imported, since importing an unknown module already runs its code.
ALLOWED_TARGET_PREFIXES = (
    "experiments.",
    "torch.optim.",
    "torch.nn.",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.trainer.trainer.Trainer",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.callbacks.",
    "optuna.samplers.",
    "optuna.pruners.",
    "hydra_plugins.experiments_sweeper.",
)


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


def check_targets(cfg: DictConfig, source: str, trust: Sequence[str] = ()) -> None:
    """Refuse a config that would build anything but this project's and the libraries' known classes.

    Hydra's ``instantiate`` calls whatever ``_target_`` names, at any depth (``torch.load`` with
    ``weights_only: false``, ``builtins.open`` with ``mode: w``, ``os.system``): a config read from a
    run folder is data, and may only name a class under :data:`ALLOWED_TARGET_PREFIXES`, or in a
    package that the user names in ``trust`` (their own models, data or tasks).
    """
    allowed = ALLOWED_TARGET_PREFIXES + tuple(f"{name.rstrip('.')}." for name in trust if name)
    for key, target in _targets(cfg, ""):
        if not isinstance(target, str) or not target.startswith(allowed) or not _is_class(target):
            own = target.split(".")[0] if isinstance(target, str) and "." in target else "PACKAGE"
            raise UserError(
                f"{source}: {key} = {target!r} is not allowed: a run's config may only build this "
                "project's classes (experiments.*) and known library classes (torch.optim.*, torch.nn.*, "
                "lightning.pytorch Trainer, loggers and callbacks); replace config.yaml with the one its run "
                f"wrote, or, for a class of your own package that you trust, pass trust=[{own}]"
            )


def _targets(node: Any, key: str) -> list[tuple[str, Any]]:
    """Every ``_target_`` of a config, with its full key, without resolving any interpolation."""
    found = []
    if isinstance(node, DictConfig):
        for name in node.keys():
            child = node._get_node(name)  # the raw node: an interpolation is neither resolved nor run
            label = str(name)
            full = f"{key}.{label}" if key else label
            if name == "_target_":
                value = child._value() if child is not None else None
                found.append((full, value))
            else:
                found.extend(_targets(child, full))
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            found.extend(_targets(node._get_node(index), f"{key}[{index}]"))
    return found


def _is_class(target: str) -> bool:
    import inspect

    from hydra.utils import get_object

    try:
        return inspect.isclass(get_object(target))
    except Exception:  # noqa: BLE001 - a target that cannot be found cannot be allowed either
        return False
