"""Finding, reading and checking checkpoints: safely, and with one clear line when they are wrong.

Every checkpoint is read with ``torch.load(weights_only=True)``, which unpickles only tensors and
plain containers, so a checkpoint crafted to run code when unpickled is refused without running it.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from experiments.errors import UserError

LAST = Path("checkpoints") / "last.ckpt"
# The key under which a checkpoint carries the resolved config of its run (see Task.on_save_checkpoint).
CONFIG_KEY = "config"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, read without running any code it may carry."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"checkpoint not found: {file}; pass the path of a .ckpt file written by a run")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and I/O errors all mean the same thing to the user
        raise UserError(f"cannot read checkpoint {file} safely: {_why_unreadable(err)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{file} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def config_container(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved into plain dicts, lists and scalars, which ``torch.load(weights_only=True)`` reads."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def checkpoint_config(
    ckpt_path: str | os.PathLike[str], trust: Sequence[str] = (), config: str | os.PathLike[str] | None = None
) -> tuple[Path, DictConfig, dict[str, Any]]:
    """A checkpoint's path, the config its run is rebuilt from, and its contents.

    The config is the one the checkpoint carries, so a checkpoint file works wherever it was moved;
    ``config`` (a run's ``config.yaml``) replaces it, for checkpoints written before they carried
    one. Either way it may build only this project's and the libraries' known classes, plus those
    of the packages named in ``trust`` (:func:`check_targets`).
    """
    ckpt = Path(ckpt_path).expanduser()
    if not ckpt.is_file():
        raise UserError(
            f"checkpoint not found: {ckpt}; pass ckpt_path=<run dir>/checkpoints/best.ckpt of a finished run"
        )
    checkpoint = read_checkpoint(ckpt)
    if config is not None:
        source = Path(config).expanduser()
        if not source.is_file():
            raise UserError(
                f"config file not found: {source}; pass config=<run dir>/config.yaml of the checkpoint's run"
            )
        try:
            run_cfg = OmegaConf.load(source)
        except Exception as err:  # noqa: BLE001 - YAML and OmegaConf errors alike: the file is damaged
            raise UserError(f"cannot read {source}: {' '.join(str(err).split())[:200]}") from None
        where = str(source)
    else:
        stored = checkpoint.get(CONFIG_KEY)
        if stored is None:
            raise UserError(
                f"checkpoint {ckpt} carries no config (written before checkpoints held their run's config); "
                "pass its run's config with it: config=<run dir>/config.yaml"
            )
        if not isinstance(stored, dict):
            raise UserError(f"checkpoint {ckpt} carries a damaged config (not a mapping of keys); use one a run wrote")
        run_cfg = OmegaConf.create(stored)
        where = f"checkpoint {ckpt}"
    if not isinstance(run_cfg, DictConfig):
        raise UserError(f"{where} does not hold a run's config (a mapping of keys)")
    check_targets(run_cfg, where, trust)
    return ckpt, run_cfg, checkpoint


def folder_of(ckpt: Path) -> Path:
    """Where a checkpoint's run keeps its files: the run folder of ``<run>/checkpoints/x.ckpt``, or
    the folder of a checkpoint moved elsewhere."""
    ckpt = ckpt.resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _why_unreadable(err: Exception) -> str:
    """Why a weights-only load refused a file, without torch's advice to load it unsafely."""
    text = " ".join(str(err).split())
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if "Weights only load failed" in text or found:
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds a pickled object{what} that only an unsafe load would build, which could run "
            "code; it is not a checkpoint of this project: do not load it, use one a run wrote "
            "(tensors and plain values only)"
        )
    return (
        f"{text[:200]}; it is corrupt or holds more than weights "
        "(only checkpoints with tensors and plain values are loaded)"
    )


# What Lightning needs to continue training from a checkpoint, beyond its weights.
TRAINING_STATE = ("optimizer_states", "loops", "epoch", "global_step")


def check_resumable(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint that holds weights but not the training state a run continues from: one
    saved with ``save_weights_only``, a bare state_dict, or one from Lightning before 1.6."""
    version = str(checkpoint.get("pytorch-lightning_version", ""))
    missing = [key for key in TRAINING_STATE if key not in checkpoint]
    if missing:
        raise UserError(
            f"checkpoint {path} holds weights but no training state ({', '.join(missing)} missing: saved "
            "weights-only); training cannot continue from it; evaluate and predict can use it, and "
            "ckpt_path= and resume= take a last.ckpt or best.ckpt that a run of this project wrote"
        )
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers is None or (int(numbers.group(1)), int(numbers.group(2))) < (1, 6):
        raise UserError(
            f"checkpoint {path} was written by Lightning {version or '(unknown version)'}, before 1.6, whose "
            "training state this version cannot continue; evaluate and predict can use its weights, and "
            "ckpt_path= and resume= take a checkpoint that a run of this project wrote"
        )


def load_weights(module: nn.Module, checkpoint: dict[str, Any], path: str | Path, against: str) -> None:
    """Load a checkpoint's weights into ``module``, or say in one line why they don't fit."""
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(f"checkpoint {path} does not fit {against}: {' '.join(str(err).split())[:300]}") from None


def check_resume_options(cfg: DictConfig) -> None:
    """Refuse ``resume=`` together with ``ckpt_path=``: a run continues its own folder's checkpoint,
    or starts a new one from a file."""
    if cfg.get("resume") and cfg.get("ckpt_path"):
        raise UserError("pass either resume=latest|<run dir> or ckpt_path=<file>, not both")


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint a training run continues from: ``<run dir>/checkpoints/last.ckpt`` for
    ``resume=...``, the given file for ``ckpt_path=...``, or None for a fresh run."""
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    check_resume_options(cfg)
    if resume:
        last = run_dir / LAST
        if not last.is_file():
            raise UserError(
                f"resume={resume}: no {LAST} in the run directory {run_dir}; pass resume=latest or the "
                "folder of a run that wrote one"
            )
        return last
    return Path(str(ckpt_path)).expanduser() if ckpt_path else None


# What a stored config may build --------------------------------------------------------------

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
            # private: omegaconf 2.3 -- the raw node: an interpolation is neither resolved nor run
            child = node._get_node(name)
            label = str(name)
            full = f"{key}.{label}" if key else label
            if name == "_target_":
                value = child._value() if child is not None else None  # private: omegaconf 2.3
                found.append((full, value))
            else:
                found.extend(_targets(child, full))
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            found.extend(_targets(node._get_node(index), f"{key}[{index}]"))  # private: omegaconf 2.3
    return found


def _is_class(target: str) -> bool:
    try:
        return inspect.isclass(get_object(target))
    except Exception:  # noqa: BLE001 - a target that cannot be found cannot be allowed either
        return False
