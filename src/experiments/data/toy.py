"""The two smallest data sets of the primer: a straight line and the XOR truth table."""

from __future__ import annotations

import torch

from experiments.data.base import InMemoryDataModule
from experiments.data.spec import DataSpec


class LineDataModule(InMemoryDataModule):
    """``y = 2x`` at x = 1, 2, 3, 4, as one full batch; validation and test see the same points."""

    def __init__(self, batch_size: int = 4, slope: float = 2.0) -> None:
        super().__init__(batch_size=batch_size)
        self.slope = slope

    @property
    def spec(self) -> DataSpec:
        return DataSpec(input_shape=(1,), output_shape=(1,), task="regression")

    def setup(self, stage: str | None = None) -> None:
        x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
        self.train_set = self.val_set = self.test_set = (x, self.slope * x)


class XORDataModule(InMemoryDataModule):
    """The four rows of the XOR truth table, as one full batch.

    Train, validation and test are the same four rows: a truth table has nothing else to hold out.
    """

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__(batch_size=batch_size)

    @property
    def spec(self) -> DataSpec:
        return DataSpec(input_shape=(2,), output_shape=(1,), task="classification", num_classes=2)

    def setup(self, stage: str | None = None) -> None:
        x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        y = torch.tensor([0, 1, 1, 0])
        self.train_set = self.val_set = self.test_set = (x, y)
