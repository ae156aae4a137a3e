from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class InMemoryLoader:
    """Batches of tensors that already sit in memory, drawn by indexing with a seeded permutation.

    Written here rather than using ``torch.utils.data.DataLoader`` because a DataLoader fetches
    samples one by one through ``__getitem__`` and collates them, which costs more than the whole
    forward and backward pass of a small model; indexing a tensor with a batch of indices costs
    almost nothing.

    Every epoch draws its permutation from ``seed + epoch``, so an epoch can be replayed exactly.
    Under DDP each rank takes a disjoint, equally long shard of that permutation (the last
    ``len % world_size`` samples of a shuffled epoch are dropped), so every rank runs the same
    number of batches.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("InMemoryLoader needs one or more tensors of equal length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._position = (0, 0)  # (epoch, batches handed out) of the current iteration
        self._resume: tuple[int, int] | None = None
        # Lightning calls ``dataloader.sampler.set_epoch(epoch)`` at the start of every training
        # epoch (meant for a DistributedSampler). Being our own sampler, the epoch counter follows
        # the trainer's, including after resuming from a checkpoint taken at an epoch's end, where
        # Lightning restores no loader state.
        self.sampler = self
        self.batch_sampler = None

    @property
    def num_samples(self) -> int:
        """Samples this rank sees in one epoch."""
        return len(self.tensors[0]) // self.world_size if self.world_size > 1 else len(self.tensors[0])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self, epoch: int) -> torch.Tensor | None:
        """This rank's sample order for ``epoch``, or None for the plain order 0..n-1."""
        n = len(self.tensors[0])
        if not self.shuffle and self.world_size == 1:
            return None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        # Moved to the data's device once per epoch, not once per batch.
        return order[self.rank : self.num_samples * self.world_size : self.world_size].to(self.tensors[0].device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self.epoch
        # A restored mid-epoch position applies only to the epoch it was saved in: Lightning
        # restores the state of a checkpoint taken at an epoch's end too, then starts the next
        # epoch with set_epoch.
        first = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        # The next iteration is the next epoch, also when the consumer stops after len(self)
        # batches without exhausting this generator (Lightning's prefetcher does).
        self.epoch = epoch + 1
        self._position = (epoch, first)
        indices = self._indices(epoch)
        for batch in range(first, len(self)):
            start = batch * self.batch_size
            stop = min(start + self.batch_size, self.num_samples)
            if indices is None:
                yield tuple(t[start:stop] for t in self.tensors)
            else:
                chosen = indices[start:stop]
                yield tuple(t[chosen] for t in self.tensors)
            # Reached when the next batch is asked for: with Lightning's one-batch prefetch that
            # is while batch `batch` is trained on, so a checkpoint taken after it resumes at the
            # batch that follows.
            self._position = (epoch, batch + 1)

    def state_dict(self) -> dict[str, Any]:
        epoch, batches_done = self._position
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["batches_done"]))
