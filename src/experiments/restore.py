"""Rebuilding a finished run from its checkpoint: the one restore that evaluate, predict and
``load_run`` share.

The data module and the model come from the config that the checkpoint carries (its run's
resolved config), or from a run's ``config.yaml`` for a checkpoint written before checkpoints
carried one. Either is data that anyone may have written (:mod:`experiments.stored`): it may build
only the classes registered for each place, plus those of the packages named in ``trust``, with
plain options; it never downloads, reads data only from the user's data folder, and gives the
trainer no logger, profiler or callback of its own. The checkpoint is read with
``weights_only=True``: it cannot run code. The model is sized on the ``meta`` device and compared
with the checkpoint's tensors before anything is allocated, and weights that are not finite are
refused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.callbacks import ProgressBar
from experiments.checkpoints import checkpoint_config, folder_of, load_weights
from experiments.config import build, build_trainer, check_options, data_root
from experiments.errors import UserError
from experiments.stored import rebuild_config, trusted_packages
from experiments.tasks import Task


@dataclass
class Restored:
    """A finished run, rebuilt: its checkpoint (path and contents), config (as stored: data, never
    built), the part of it that was built (``rebuilt``), data module and task (with the
    checkpoint's weights loaded)."""

    checkpoint_path: Path
    config: DictConfig
    checkpoint: dict[str, Any]
    datamodule: L.LightningDataModule
    task: Task
    rebuilt: DictConfig

    @property
    def run_dir(self) -> Path:
        """The folder of the checkpoint's run (or of a checkpoint moved elsewhere)."""
        return folder_of(self.checkpoint_path)

    def trainer(self, **overrides: Any) -> L.Trainer:
        """A single-device trainer of the run's settings (precision, accelerator) without loggers or
        checkpoints, with a progress bar in a terminal only; ``overrides`` win."""
        options: dict[str, Any] = {
            "devices": 1,
            "num_nodes": 1,
            "strategy": "auto",
            "logger": False,
            "callbacks": [ProgressBar()],
            "enable_checkpointing": False,
            "enable_progress_bar": True,
            **overrides,
        }
        return build_trainer(self.rebuilt, **options)


def trusted(value: Any) -> list[str]:
    """The command line's ``trust=`` as a list of package names: ``trust=my_parts`` is
    ``trust=[my_parts]`` (not its letters); anything else is refused in one line."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    names = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise UserError(f"trust={value!r}: pass the names of your packages, trust=[my_parts] (or trust=my_parts)")
    return names


def restore(
    ckpt_path: str | os.PathLike[str], trust: Sequence[str] | str = (), config: str | os.PathLike[str] | None = None
) -> Restored:
    """Rebuild the run of ``ckpt_path`` and load its weights, or say in one line why not.

    Building draws initial weights from torch's random generator: the caller's random state is
    left as it was."""
    packages = trusted_packages(trust)
    path, stored, checkpoint, source = checkpoint_config(ckpt_path, config)
    rebuilt = rebuild_config(stored, source, packages, data_root())
    try:
        check_options(rebuilt)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    against = "the model of its config"
    with torch.random.fork_rng(devices=[]):
        # Sized on the meta device first: a config whose sizes disagree with the checkpoint's
        # tensors (hidden: [2000000000]) is refused before anything is allocated.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            _, sized = build(rebuilt)
            load_weights(sized, checkpoint, path, against)
        check_finite(checkpoint, path)
        datamodule, task = build(rebuilt)
    load_weights(task, checkpoint, path, against)
    return Restored(path, stored, checkpoint, datamodule, task, rebuilt)


def check_finite(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse weights that are not finite: a model computes nothing meaningful from NaN."""
    for name, tensor in checkpoint["state_dict"].items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"checkpoint {path} holds weights that are not finite (NaN or infinity in {name}): its run "
                "diverged; use a checkpoint from before that (or train again with a lower optimizer.lr)"
            )
