"""A data set of one's own: two noisy concentric circles, generated in memory."""

from __future__ import annotations

import math

import torch

from experiments.data import DataSpec, InMemoryDataModule


class CirclesDataModule(InMemoryDataModule):
    """Points on two concentric circles (radius 1: class 0, radius ``factor``: class 1) plus noise.

    Subclassing :class:`experiments.data.InMemoryDataModule` is all the framework needs: declare
    :attr:`spec` (what a sample looks like; the model is sized from it and the task chosen by it)
    and fill ``train_set``, ``val_set`` and ``test_set`` with ``(inputs, targets)`` tensors in
    :meth:`setup`. Batching, shuffling, DDP sharding and device placement come with the base class.
    """

    def __init__(
        self,
        n: int = 1200,
        noise: float = 0.1,
        factor: float = 0.5,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        if n < 30:
            raise ValueError(f"n must be at least 30, got {n}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be between 0 and 1, got {factor}")
        self.n, self.noise, self.factor = n, noise, factor

    @property
    def spec(self) -> DataSpec:
        return DataSpec(input_shape=(2,), output_shape=(1,), task="classification", num_classes=2)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        labels = torch.arange(self.n) % 2
        angle = torch.rand(self.n, generator=g) * 2 * math.pi
        radius = torch.where(labels == 0, 1.0, self.factor)
        points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
        points += self.noise * torch.randn(self.n, 2, generator=g)
        order = torch.randperm(self.n, generator=g)
        points, labels = points[order], labels[order]
        a, b = int(0.7 * self.n), int(0.85 * self.n)
        self.train_set = (points[:a], labels[:a])
        self.val_set = (points[a:b], labels[a:b])
        self.test_set = (points[b:], labels[b:])
