"""Rebuilding a finished run from its checkpoint: the one restore that evaluate, predict and
``load_run`` share.

The data module and the model come from the config that the checkpoint carries (its run's
resolved config), or from a run's ``config.yaml`` for a checkpoint written before checkpoints
carried one; either way the config may build only this project's and the libraries' known
classes, plus those of the packages named in ``trust`` (:func:`experiments.checkpoints.check_targets`).
The checkpoint is read with ``weights_only=True``: it cannot run code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.callbacks import ProgressBar
from experiments.checkpoints import checkpoint_config, folder_of, load_weights
from experiments.config import build, build_trainer
from experiments.errors import UserError
from experiments.tasks import Task


@dataclass
class Restored:
    """A finished run, rebuilt: its checkpoint (path and contents), config, data module and task
    (with the checkpoint's weights loaded)."""

    checkpoint_path: Path
    config: DictConfig
    checkpoint: dict[str, Any]
    datamodule: L.LightningDataModule
    task: Task

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
        return build_trainer(self.config, **options)


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
    ckpt_path: str | os.PathLike[str], trust: Sequence[str] = (), config: str | os.PathLike[str] | None = None
) -> Restored:
    """Rebuild the run of ``ckpt_path`` and load its weights, or say in one line why not.

    Building draws initial weights from torch's random generator: the caller's random state is
    left as it was."""
    path, run_config, checkpoint = checkpoint_config(ckpt_path, trust, config)
    with torch.random.fork_rng(devices=[]):
        datamodule, task = build(run_config)
    load_weights(task, checkpoint, path, "the model of its config")
    return Restored(path, run_config, checkpoint, datamodule, task)
