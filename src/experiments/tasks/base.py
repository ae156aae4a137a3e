from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "_train_count"})


class Task(L.LightningModule):
    """A plain model plus what training needs: the loss, the metrics, the optimizer and scheduler.

    ``optimizer`` and ``scheduler`` are factories (for example ``functools.partial(torch.optim.Adam,
    lr=1e-3)``, or Hydra's ``_partial_: true``), so the task stays independent of how it is configured.
    Subclasses implement :meth:`shared_step`, which returns the loss and logs the metrics of a split.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.model = model
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitor = monitor
        # Running sums of this epoch's training values (see log_split), kept on the device.
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_count = 0
        # Validation and test values given as tensors, as sums and counts (see log_split).
        self._eval_means = nn.ModuleDict()

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name around every hook it calls, some 40 times per training
        # step; nn.Module.__setattr__ (which looks for parameters, buffers and submodules) costs
        # more than those steps can afford. These attributes are never any of those.
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def log_split(self, split: str, values: dict[str, Any], batch_size: int) -> None:
        """Log per-epoch values of a split as ``<split>/<name>`` (reduced across DDP ranks).

        Training values are batch means as tensors: they are summed on the device and logged
        once, at the epoch's last batch, as the epoch's sample-weighted mean. ``self.log`` costs
        more than a whole training step of a small model (it reorganises Lightning's result
        collection on every call), and the per-step values are not used. Validation and test
        values (tensors or torchmetrics metrics) go through ``self.log`` on every batch: those
        loops are short. Their tensors are kept as a sum and a count (``MeanMetric``), which add up
        exactly across DDP ranks whose shards differ by a sample (Lightning's own mean of a tensor
        averages the per-rank counts in integers, so uneven shards would be weighted wrongly).
        """
        if split == "train":
            self._accumulate_train(values, batch_size)
            return
        for name, value in values.items():
            attribute = None
            if isinstance(value, torch.Tensor):
                value, attribute = self._eval_mean(f"{split}_{name}", value, batch_size)
            self.log(
                f"{split}/{name}",
                value,
                metric_attribute=attribute,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,  # reduced once per epoch (on_step=False), so it costs nothing per step
                prog_bar=name == "loss",
            )

    def _eval_mean(self, key: str, value: torch.Tensor, batch_size: int) -> tuple[torchmetrics.MeanMetric, str]:
        metric = self._eval_means[key] if key in self._eval_means else None
        if metric is None:
            metric = torchmetrics.MeanMetric().to(value.device)
            if value.dtype == torch.float64:
                metric.set_dtype(torch.float64)
            self._eval_means[key] = metric
        metric.update(value.detach(), weight=batch_size)
        return metric, f"_eval_means.{key}"

    def _accumulate_train(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in values.items():
            total = value.detach() * batch_size
            if name in self._train_sums:
                self._train_sums[name].add_(total)
            else:
                self._train_sums[name] = total
        self._train_count += batch_size
        # Logged from the last step rather than on_train_epoch_end, so that callbacks that read
        # the epoch's metrics in their own on_train_epoch_end (History) see them.
        # is_last_batch alone misses the end of an epoch cut short by limit_train_batches or
        # overfit_batches, where the loader still has batches left.
        trainer = self._trainer
        if trainer is not None and (
            trainer.is_last_batch
            or trainer.fit_loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches
        ):
            self._log_train_epoch()

    def _log_train_epoch(self) -> None:
        count, sums = self._train_count, self._train_sums
        self._train_sums, self._train_count = {}, 0
        for name, total in sums.items():
            self.log(
                f"train/{name}",
                total / count,
                on_step=False,
                on_epoch=True,
                batch_size=count,
                sync_dist=True,  # once per epoch; every rank holds the same number of samples
                prog_bar=name == "loss",
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint taken mid-epoch resumes with the epoch's running sums.
        checkpoint["train_epoch_sums"] = {
            "sums": {k: v.detach().cpu() for k, v in self._train_sums.items()},
            "count": self._train_count,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("train_epoch_sums") or {"sums": {}, "count": 0}
        self._train_sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self._train_count = int(state["count"])

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "monitor": self.monitor,
            },
        }
