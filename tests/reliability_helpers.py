"""A synthetic data set big enough for mid-epoch checkpoints, and a callback that kills its own
process with SIGKILL at a chosen point, so that a test can interrupt a real run deterministically.

Importable by the runs a test starts: the tests add this folder to PYTHONPATH.
"""

from __future__ import annotations

import os
import signal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from experiments.data.base import InMemoryDataModule
from experiments.data.spec import DataSpec


class BlobsDataModule(InMemoryDataModule):
    """``classes`` Gaussian blobs in ``features`` dimensions, drawn from ``data_seed``."""

    def __init__(
        self,
        batch_size: int = 32,
        n_train: int = 256,
        n_val: int = 64,
        n_test: int = 64,
        features: int = 8,
        classes: int = 3,
        data_seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size)
        self.sizes = (n_train, n_val, n_test)
        self.features = features
        self.classes = classes
        self.data_seed = data_seed

    @property
    def spec(self) -> DataSpec:
        return DataSpec(input_shape=(self.features,), output_shape=(self.classes,), task="classification",
                        num_classes=self.classes)

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.data_seed)
        centres = 2.0 * torch.randn(self.classes, self.features, generator=generator)
        splits = []
        for n in self.sizes:
            y = torch.randint(0, self.classes, (n,), generator=generator)
            x = centres[y] + torch.randn(n, self.features, generator=generator)
            splits.append((x, y))
        self.train_set, self.val_set, self.test_set = splits


class KillAt(Callback):
    """SIGKILL this process at ``hook`` once ``global_step`` (train batches) or ``epoch`` is reached.

    Callbacks run before Lightning's checkpoint callbacks, so a kill in ``on_train_batch_end``
    lands after the optimizer step and before that step's checkpoint is written.
    """

    def __init__(self, hook: str, step: int = -1, epoch: int = -1) -> None:
        if hook not in ("train_batch_end", "validation_batch_end", "train_epoch_start"):
            raise ValueError(f"unknown hook {hook!r}")
        self.hook, self.step, self.epoch = hook, step, epoch

    def _maybe_kill(self, trainer: L.Trainer, hook: str) -> None:
        if hook == self.hook and (trainer.global_step == self.step or trainer.current_epoch == self.epoch):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self._maybe_kill(trainer, "train_batch_end")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if not trainer.sanity_checking:
            self._maybe_kill(trainer, "validation_batch_end")

    def on_train_epoch_start(self, trainer: L.Trainer, *args: object) -> None:
        self._maybe_kill(trainer, "train_epoch_start")
