from __future__ import annotations

import stat
from abc import abstractmethod
from pathlib import Path

import lightning as L
import torch

from experiments.data.loader import InMemoryLoader
from experiments.data.spec import DataSpec
from experiments.errors import UserError

Split = tuple[torch.Tensor, torch.Tensor]


def refuse_non_file(path: Path, what: str) -> None:
    """Refuse a data file's path that holds something other than a regular file (a folder, a named
    pipe, a device): it is neither read (a pipe would block) nor replaced by a download."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing: the caller downloads it or says so
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise UserError(f"{path} is {kind}, not a data file; put the {what} file there in its place")


class InMemoryDataModule(L.LightningDataModule):
    """A data module whose splits are pairs of tensors ``(inputs, targets)`` held in memory.

    Subclasses fill ``train_set``, ``val_set`` and ``test_set`` in :meth:`setup` and declare
    :attr:`spec`. Batches come from :class:`InMemoryLoader`, sharded by rank under DDP.
    """

    def __init__(self, batch_size: int, eval_batch_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive integer, got {eval_batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.train_set: Split | None = None
        self.val_set: Split | None = None
        self.test_set: Split | None = None

    @property
    @abstractmethod
    def spec(self) -> DataSpec:
        """Shapes and task of what this module yields; known before :meth:`setup` runs."""

    def _loader(self, split: Split | None, name: str, train: bool) -> InMemoryLoader:
        if split is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not create the {name} split")
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self.trainer is not None:
            # The whole split moves to the accelerator once; batches are then cut on the device and
            # Lightning's per-batch transfer finds nothing to copy.
            device = self.trainer.strategy.root_device
            split = tuple(t.to(device) for t in split)  # type: ignore[assignment]
        return InMemoryLoader(
            *split,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            every_sample=not train,  # evaluation scores every sample exactly once, also under DDP
        )

    def train_dataloader(self) -> InMemoryLoader:
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> InMemoryLoader:
        return self._loader(self.val_set, "validation", train=False)

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader(self.test_set, "test", train=False)

    def predict_dataloader(self) -> InMemoryLoader:
        return self._loader(self.test_set, "test", train=False)
