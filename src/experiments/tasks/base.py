from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import nn

from experiments.checkpoints import CONFIG_KEY, config_container
from experiments.engine.epoch_logs import per_sample

if TYPE_CHECKING:
    from experiments.data.spec import DataSpec

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class Task(L.LightningModule):
    """A plain model plus what training needs: the loss, the metrics, the optimizer and scheduler.

    ``optimizer`` and ``scheduler`` are factories (for example ``functools.partial(torch.optim.Adam,
    lr=1e-3)``, or Hydra's ``_partial_: true``), so the task stays independent of how it is configured.
    Subclasses implement :meth:`shared_step`, which returns the loss and logs the metrics of a split.

    A subclass registered as a task kind (:func:`experiments.tasks.register_task_kind`) owns what
    differs between kinds: how it is built from a data spec (:meth:`from_spec`), the metrics it logs
    beside the loss (``metric_names``, the first one drawn in the learning curves), the loss of a trivial
    predictor for the diagnosis (:meth:`trivial_loss`), its predictions (``predict_step`` and
    :meth:`describe_predictions`) and the figure callbacks that draw for it (``plots``).
    """

    # Set by register_task_kind: the spec.task name data modules ask for.
    kind: ClassVar[str] = ""
    # Metrics logged per split beside the loss, as <split>/<name>; the first is the main one.
    metric_names: ClassVar[tuple[str, ...]] = ()
    # Figure callbacks (conf/callbacks/) that draw for this kind; the others stay idle.
    plots: ClassVar[tuple[type[Callback], ...]] = ()

    @classmethod
    def from_spec(cls, spec: DataSpec, model: nn.Module, **options: Any) -> Task:
        """The task for data of ``spec``; a kind that needs the spec's shapes or classes takes them here."""
        return cls(model, **options)

    @classmethod
    def trivial_loss(cls, targets: torch.Tensor, spec: DataSpec) -> float | None:
        """The loss of a predictor that ignores its input, on the training ``targets``: the
        diagnosis compares the learning curves with it. None: no diagnosis for this kind."""
        return None

    def describe_predictions(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor | None) -> str:
        """A few words on ``outputs`` of :meth:`predict_step` (and their ``targets`` when known), for
        the summary line of ``python -m experiments.predict``; empty for nothing to add."""
        return ""

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
        # Validation and test values given as tensors, as sums and counts (see log_split).
        self._eval_means = nn.ModuleDict()
        # The config this task was built from (set by experiments.config.build); every checkpoint
        # carries it resolved, so that evaluate and predict rebuild the run from the file alone.
        self.run_config: DictConfig | None = None
        self._resolved_config: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is None:
            return
        if self._resolved_config is None:
            # Resolved at the first save, after the entry point has settled values such as
            # trainer.num_threads=auto, as plain containers: torch.load(weights_only=True) reads them.
            self._resolved_config = config_container(self.run_config)
        checkpoint[CONFIG_KEY] = self._resolved_config

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
        """Log per-epoch values of a split as ``<split>/<name>``, reduced across DDP ranks.

        Values are tensors (batch means, weighted by ``batch_size`` over the epoch) or
        torchmetrics metrics. Only epoch values are logged: per-step values of every batch are
        not used by anything in a run. Under DDP, validation and test tensors are kept as a sum
        and a count (``MeanMetric``), which add up exactly across ranks whose shards differ by a
        sample (Lightning's own mean of a tensor averages the per-rank counts in integers, so
        uneven shards would be weighted wrongly); in one process Lightning's own mean is exact, and
        costs a tenth as much per batch.
        """
        for name, value in values.items():
            options: dict[str, Any] = {}
            if split != "train" and isinstance(value, torch.Tensor) and self._shards_may_differ():
                value, options["metric_attribute"] = self._eval_mean(f"{split}_{name}", value, batch_size)
            self.log(
                f"{split}/{name}",
                value,
                **options,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,  # reduced once per epoch (on_step=False), so it costs nothing per step
                prog_bar=name == "loss",
            )

    def sample_metrics(self, outputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training metrics of each sample of a batch, for :meth:`log_sample_metrics`: one value
        per sample (a tensor of shape ``(N,)`` per name), each computed from its own sample alone.
        None here; a kind that reports a training metric beside the loss returns it."""
        return {}

    def log_sample_metrics(self, split: str, outputs: torch.Tensor, target: torch.Tensor) -> None:
        """Log each of :meth:`sample_metrics` of ``outputs`` and ``target`` as ``<split>/<name>``,
        its mean over the epoch's samples.

        Here the batch's means are logged at once. While fitting, the engine
        (``experiments.engine.epoch_logs``) keeps ``outputs`` and ``target`` and computes the metrics for all
        the batches of a fused chunk together: pass outputs detached from the graph, and leave
        them unchanged afterwards.
        """
        values = self.sample_metrics(outputs, target)
        if values:
            means = {
                name: per_sample(type(self), name, value, len(target)).to(torch.get_default_dtype()).mean()
                for name, value in values.items()
            }
            self.log_split(split, means, batch_size=len(target))

    def _shards_may_differ(self) -> bool:
        trainer = self._trainer  # private: lightning 2.6 -- `trainer` raises when none is attached
        return trainer is not None and trainer.world_size > 1

    def _eval_mean(self, key: str, value: torch.Tensor, batch_size: int) -> tuple[torchmetrics.MeanMetric, str]:
        held = self._eval_means[key] if key in self._eval_means else None
        metric = held if isinstance(held, torchmetrics.MeanMetric) else None
        if metric is None:
            metric = torchmetrics.MeanMetric().to(value.device)
            if value.dtype == torch.float64:
                metric.set_dtype(torch.float64)
            self._eval_means[key] = metric
        metric.update(value.detach(), weight=batch_size)
        return metric, f"_eval_means.{key}"

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
