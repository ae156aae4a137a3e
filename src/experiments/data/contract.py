"""The one contract of a data module, checked when it is built, and what the entry points read from it.

A data module is any ``lightning.LightningDataModule`` that declares a ``spec`` (a
:class:`~experiments.data.spec.DataSpec`: per-sample input and output shapes and the task kind)
and gives the standard loaders ``train_dataloader``, ``val_dataloader`` and ``test_dataloader``,
whose batches are ``(inputs, targets)``. :class:`~experiments.data.base.InMemoryDataModule` adds
speed (whole splits as tensors, batches cut by indexing); it is not a requirement. The diagnosis
and predict read a split through :func:`split_tensors`, which uses the in-memory split where there
is one and the split's loader otherwise.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from experiments.data.spec import DataSpec
from experiments.errors import UserError

LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def check_datamodule(datamodule: Any, target: str) -> DataSpec:
    """The module's spec, or one line saying which part of the contract it misses."""
    name = target.rsplit(".", 1)[-1]
    if not isinstance(datamodule, L.LightningDataModule):
        raise UserError(
            f"data {target} is a {type(datamodule).__name__}, not a LightningDataModule; a data module "
            "subclasses lightning.LightningDataModule, declares a spec and gives train/val/test loaders"
        )
    spec = getattr(datamodule, "spec", None)
    if not isinstance(spec, DataSpec):
        raise UserError(
            f"data {target} has no spec (a DataSpec of input_shape, output_shape and task); "
            f"give {name} a spec property returning experiments.data.DataSpec(...)"
        )
    missing = [m for m in LOADERS if getattr(type(datamodule), m, None) is getattr(L.LightningDataModule, m)]
    if missing:
        raise UserError(f"data {target} does not define {', '.join(missing)}; a data module gives all three loaders")
    return spec


def split_tensors(datamodule: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(inputs, targets)`` of a split (``train`` or ``test``), read after ``setup``: the
    in-memory tensors where the module holds them, else every batch of the split's loader."""
    held = getattr(datamodule, f"{split}_set", None)
    if isinstance(held, (tuple, list)) and len(held) == 2 and all(isinstance(t, torch.Tensor) for t in held):
        return held[0], held[1]
    inputs, targets = [], []
    for batch in getattr(datamodule, f"{split}_dataloader")():
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise UserError(
                f"the {split} loader of {type(datamodule).__name__} yields {type(batch).__name__}, not (inputs, targets) batches"
            )
        inputs.append(torch.as_tensor(batch[0]).cpu())
        targets.append(torch.as_tensor(batch[1]).cpu())
    if not inputs:
        raise UserError(f"the {split} loader of {type(datamodule).__name__} yields no batches")
    return torch.cat(inputs), torch.cat(targets)


def eval_batch_size(datamodule: Any, default: int = 256) -> int:
    """The batch size for evaluation: the module's ``eval_batch_size`` or ``batch_size`` if it has one."""
    for name in ("eval_batch_size", "batch_size"):
        value = getattr(datamodule, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default
