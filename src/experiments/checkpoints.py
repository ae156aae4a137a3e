"""Finding, reading and checking checkpoints: safely, and with one clear line when they are wrong.

Every checkpoint is read with ``torch.load(weights_only=True)``, which unpickles only tensors and
plain containers, so a checkpoint crafted to run code when unpickled is refused without running it.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments.errors import UserError
from experiments.runs import read_yaml_text
from experiments.stored import stored_config

LAST = Path("checkpoints") / "last.ckpt"
# The key under which a checkpoint carries the resolved config of its run (see Task.on_save_checkpoint).
CONFIG_KEY = "config"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, read without running any code it may carry, with its
    ``state_dict`` a mapping of names to tensors."""
    file = Path(path).expanduser()
    _check_is_file(file)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and I/O errors all mean the same thing to the user
        raise UserError(f"cannot read checkpoint {file} safely: {_why_unreadable(err)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{file} is not a Lightning checkpoint (it has no state_dict)")
    weights = checkpoint["state_dict"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state")) for k, v in weights.items()
    ):
        raise UserError(
            f"{file} is not a checkpoint of this project: its state_dict is not a mapping of names to tensors; "
            "use a .ckpt file that a run wrote"
        )
    return checkpoint


def _check_is_file(file: Path) -> None:
    """One line for a checkpoint path that is missing, or a folder (a run's, say), or not a file."""
    if file.is_file():
        return
    if file.is_dir():
        best = file / "checkpoints" / "best.ckpt"
        hint = (
            f"ckpt_path={best}"
            if best.is_file()
            else "the path of a .ckpt file, such as <run dir>/checkpoints/best.ckpt"
        )
        raise UserError(f"checkpoint path {file} is a folder, not a checkpoint file; pass {hint}")
    if file.exists():
        raise UserError(f"checkpoint path {file} is not a regular file; pass the path of a .ckpt file that a run wrote")
    raise UserError(f"checkpoint not found: {file}; pass ckpt_path=<run dir>/checkpoints/best.ckpt of a finished run")


def config_container(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved into plain dicts, lists and scalars, which ``torch.load(weights_only=True)`` reads."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def checkpoint_config(
    ckpt_path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
) -> tuple[Path, DictConfig, dict[str, Any], str]:
    """A checkpoint's path, the config its run is rebuilt from, its contents, and where that config
    came from (for messages).

    The config is the one the checkpoint carries, so a checkpoint file works wherever it was moved;
    ``config`` (a run's ``config.yaml``) replaces it, for checkpoints written before they carried
    one. Either way it is data: :func:`experiments.stored.stored_config` refuses anything but plain
    values, and :func:`experiments.stored.rebuild_config` says what may be built from it.
    """
    ckpt = Path(ckpt_path).expanduser()
    checkpoint = read_checkpoint(ckpt)
    if config is not None:
        source = Path(config).expanduser()
        if not source.is_file():
            raise UserError(
                f"config file not found: {source}; pass config=<run dir>/config.yaml of the checkpoint's run"
            )
        try:
            text = read_yaml_text(source)
            stored = OmegaConf.to_container(OmegaConf.create(text), resolve=False)  # nothing resolved
        except UserError:
            raise
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
        where = f"checkpoint {ckpt}"
    return ckpt, stored_config(stored, where), checkpoint, where


def folder_of(ckpt: Path) -> Path:
    """Where a checkpoint's run keeps its files: the run folder of ``<run>/checkpoints/x.ckpt``, or
    the folder of a checkpoint moved elsewhere; as given, links not followed (a link to another
    run's checkpoint leads here, not there)."""
    ckpt = Path(os.path.abspath(ckpt))
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
    if not _resume_state_fits(checkpoint.get(RESUME_STATE)):
        raise UserError(
            f"checkpoint {path} holds a damaged {RESUME_STATE} (the random state and loader position that "
            "training continues from); use a last.ckpt or best.ckpt that a run of this project wrote"
        )


# Where experiments.callbacks.ResumeState keeps the random state in a checkpoint (its KEY).
RESUME_STATE = "resume_state"


def _resume_state_fits(state: Any) -> bool:
    """Whether a checkpoint's resume state (or its absence) is what ResumeState puts back when
    training starts, tried on generators of its own: a damaged one would otherwise fail there,
    after the run folder was written."""
    if state is None:
        return True
    try:
        random.Random().setstate(state["python"])
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.Generator().set_state(state["torch"])
        loaders, cuda = state["train_loaders"], state.get("cuda", [])
    except Exception:  # noqa: BLE001 - any way a crafted state breaks means the same: damaged
        return False
    return (
        isinstance(loaders, list)
        and all(isinstance(loader, dict) for loader in loaders)
        and isinstance(cuda, list)
        and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)
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
