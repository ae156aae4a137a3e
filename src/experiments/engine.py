"""Lightning's Trainer at a plain loop's speed: fused steps, and every use of a library internal.

Why this module exists. On the small models this project is about, Lightning's fixed cost per
training step (about 30 hook dispatches, the optimizer closure, progress counters and the batch
transfer: some 0.4 ms on a 2-core CPU) costs as much as the step itself, and Lightning's
maintainers won't remove it. Keras met the same problem with ``steps_per_execution``: several
optimizer steps per call into the framework. :class:`Trainer` does that on Lightning's own loop.
The train loader hands Lightning *chunks* of K consecutive batches, and one Lightning training
step runs all K optimizer steps. The last batch of each chunk goes through Lightning's automatic
optimisation as usual; the K - 1 before it are stepped here, with what matters of Lightning's
per-step work kept:

- the same arithmetic in the same order (so weights, optimizer state, ``history.csv`` and test
  metrics are bit-identical to ``steps_per_execution=1`` on a deterministic CPU run);
- the step counter (``trainer.global_step`` counts optimizer steps), step-interval schedulers,
  gradient clipping (``configure_gradient_clipping``), AMP loss scaling and gradient averaging
  under DDP;
- the per-step hooks that callbacks rely on (``on_before_zero_grad``, ``on_before_backward``,
  ``on_after_backward``, ``on_before_optimizer_step``), called only on the callbacks that
  override them, and step checkpoints (``ModelCheckpoint(every_n_train_steps=N)``) on the exact
  step, inside a chunk when needed;
- batch-level hooks (``on_train_batch_start`` / ``end``, progress bars, ``log_every_n_steps``)
  run once per chunk, as Keras's ``on_train_batch_*`` do with ``steps_per_execution``;
- ``self.log(..., on_epoch=True)`` in ``training_step`` is summed here exactly as Lightning sums
  it and handed to Lightning once per epoch, since ``self.log`` itself costs more than a small
  model's step.

Nothing here is needed by a task, model or data module: a :class:`~experiments.tasks.Task` is a
plain LightningModule, and ``lightning.Trainer`` runs it unchanged. A module that steps its own
way (manual optimisation, its own ``optimizer_step``, ``backward`` or batch hooks), gradient
accumulation, mid-epoch validation, or a loader that is not an in-memory one, fall back to one
step per Lightning step, with one line saying so.

Every use of a private Lightning or Optuna attribute in the project is in this module, tested with
the versions that ``pyproject.toml`` allows (Lightning 2.5-2.6, Optuna 4-5).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities.model_helpers import is_overridden

log = logging.getLogger(__name__)

AUTO = "auto"
# One Lightning step of ``auto`` chunks does about this many floating-point operations (6 per
# parameter per sample: forward and backward): some 20 ms on one core of a 2-core CPU, 50 times
# Lightning's own cost per step.
_AUTO_FLOPS_PER_EXECUTION = 4e8
_AUTO_MAX_STEPS = 64
# Hooks of the optimizer step that a callback may rely on; called per inner step when overridden.
_STEP_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
# Module methods that mean "this module steps its own way": it cannot be fused.
_OWN_STEPPING = ("optimizer_step", "optimizer_zero_grad", "backward", "on_train_batch_start", "on_train_batch_end")


class Chunk:
    """Up to K consecutive training batches of one epoch, handed to Lightning as one batch.

    Batches are drawn from the loader only as they are trained on, so a checkpoint written
    inside a chunk records exactly how many batches the model has seen.
    """

    __slots__ = ("_batches", "size", "start")

    def __init__(self, batches: Iterator[Any], start: int, size: int) -> None:
        self._batches = batches
        self.start = start
        self.size = size

    def __len__(self) -> int:
        return self.size

    def next_batch(self) -> Any:
        return next(self._batches)


class ChunkedLoader:
    """A training loader's batches in chunks of ``steps`` (the last chunk of an epoch may be shorter).

    Chunks start at multiples of ``steps`` from the start of the epoch, so a run resumed inside an
    epoch (the wrapped loader restarts at its saved position) continues with the same chunks.
    ``limit`` caps the batches of an epoch (``limit_train_batches``, ``overfit_batches`` and
    ``fast_dev_run`` count batches, not chunks); ``steps_left`` (for ``max_steps``) ends the last
    chunk on the last step. ``state_dict``, ``load_state_dict`` and
    ``sampler.set_epoch`` are the wrapped loader's, so resuming works as without chunks.
    """

    def __init__(
        self, loader: Any, steps: int, limit: int | float = 1.0, steps_left: Callable[[], int] | None = None
    ) -> None:
        self.loader = loader
        self.steps = steps
        self.steps_left = steps_left
        # Lightning's rule for limit_train_batches: an int is a count, a float a fraction rounded down.
        count = len(loader)
        self.batches_per_epoch = min(limit, count) if isinstance(limit, int) else int(count * limit)
        if self.batches_per_epoch < 1:
            from experiments.errors import UserError

            raise UserError(f"trainer.limit_train_batches={limit} leaves no training batch of {count}")
        self.sampler = loader.sampler

    def __len__(self) -> int:
        return -(-self.batches_per_epoch // self.steps)

    def __iter__(self) -> Iterator[Chunk]:
        position = self.loader.start_position
        batches = iter(self.loader)
        while position < self.batches_per_epoch:
            end = min((position // self.steps + 1) * self.steps, self.batches_per_epoch)
            if self.steps_left is not None:  # max_steps: the last chunk ends on the last step
                end = min(end, position + max(self.steps_left(), 1))
            yield Chunk(batches, position, end - position)
            position = end

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def auto_steps(parameters: int, batch_size: int, accelerator_is_cpu: bool) -> int:
    """K for ``steps_per_execution=auto``: enough work per Lightning step to hide its cost.

    Deterministic (a run resumes with the K it started with). On an accelerator a small step is
    bound by kernel launches rather than arithmetic, so K is as large as it goes.
    """
    if not accelerator_is_cpu:
        return _AUTO_MAX_STEPS
    flops = 6 * max(parameters, 1) * max(batch_size, 1)
    return max(1, min(_AUTO_MAX_STEPS, math.ceil(_AUTO_FLOPS_PER_EXECUTION / flops)))


class _EpochLogs:
    """``self.log`` of a training step, summed as Lightning's ResultCollection sums it.

    Lightning adds ``value * batch_size`` to a float tensor and ``batch_size`` to an integer tensor
    on every call, and divides once at the end of the epoch. Doing those very operations here,
    and handing Lightning the quotient once per epoch with ``batch_size=1`` (x * 1 / 1 == x),
    gives bit-identical epoch values at a fraction of the cost. Calls this does not fast-path
    (``on_step`` and ``on_epoch`` together, other reductions, non-tensors, metric objects) go
    straight to Lightning.
    """

    def __init__(self, real_log: Any) -> None:
        self.real_log = real_log
        self.active = False
        self.batch_size = 1
        self.sums: dict[str, list[Any]] = {}  # name -> [value sum, count, flush kwargs]
        self.last_step: dict[str, tuple[Any, dict[str, Any]]] = {}

    def __call__(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
                 on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
                 enable_graph: bool = False, sync_dist: bool = False, batch_size: int | None = None,
                 **rest: Any) -> None:
        if not self.active:  # validation, epoch hooks: Lightning's own defaults and batch size
            self.real_log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                          reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                          batch_size=batch_size, **rest)
            return
        on_step = True if on_step is None else on_step  # Lightning's defaults in training_step
        on_epoch = False if on_epoch is None else on_epoch
        fast = (
            isinstance(value, torch.Tensor)
            and on_step != on_epoch
            and reduce_fx in ("mean", torch.mean)
            and not enable_graph
            and not rest
        )
        if not fast:  # the batch size of the chunk's batch, not of the chunk Lightning holds
            self.real_log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                          reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                          batch_size=batch_size if batch_size is not None else self.batch_size, **rest)
            return
        options = {"prog_bar": prog_bar, "logger": logger, "sync_dist": sync_dist}
        if on_step:
            self.last_step[name] = (value.detach(), options)
            return
        size = batch_size if batch_size is not None else self.batch_size
        value = value.detach()
        if value.dtype not in (torch.float32, torch.float64):
            value = value.to(torch.get_default_dtype())
        entry = self.sums.get(name)
        if entry is None:
            entry = self.sums[name] = [torch.tensor(0.0, dtype=torch.get_default_dtype(), device=value.device),
                                       torch.tensor(0, device=value.device), options]
        entry[0] = entry[0] + value * size
        entry[1] = entry[1] + size

    def flush_steps(self) -> None:
        """The last on_step value of each name, once per chunk (Keras: once per execution)."""
        last, self.last_step = self.last_step, {}
        for name, (value, options) in last.items():
            self.real_log(name, value, on_step=True, on_epoch=False, batch_size=1, **options)

    def flush_epoch(self) -> None:
        sums, self.sums = self.sums, {}
        for name, (total, count, options) in sums.items():
            self.real_log(name, total / count, on_step=False, on_epoch=True, batch_size=1, **options)

    def state_dict(self) -> dict[str, Any]:
        return {name: [t.cpu(), c.cpu(), dict(o)] for name, (t, c, o) in self.sums.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {name: [t.to(device), c.to(device), dict(o)] for name, (t, c, o) in state.items()}


class _FusedSteps(Callback):
    """Runs the optimizer steps of a chunk; installed on the module by :class:`Trainer` for one fit."""

    def __init__(self, steps: int) -> None:
        self.steps = steps  # 0: auto
        self.limit: int | float = 1.0
        self.logs: _EpochLogs | None = None  # set while installed
        self._saved_logs: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "FusedSteps"

    # Installing and removing ----------------------------------------------------------------

    def install(self, module: L.LightningModule, datamodule: Any, limit: int | float) -> None:
        self.limit = limit
        self.module = module
        self.training_step = module.training_step
        self.logs = _EpochLogs(module.log)
        module.log = self.logs  # type: ignore[method-assign]
        module.training_step = self._training_step  # type: ignore[method-assign]
        # A chunk passes Lightning's batch transfer untouched; its batches go through it one by one.
        self._before_transfer = module._on_before_batch_transfer
        self._apply_transfer = module._apply_batch_transfer_handler
        module._on_before_batch_transfer = self._chunk_before_transfer  # type: ignore[method-assign]
        module._apply_batch_transfer_handler = self._chunk_apply_transfer  # type: ignore[method-assign]
        self.datamodule = datamodule
        self._train_dataloader = datamodule.train_dataloader
        datamodule.train_dataloader = self._chunked_train_dataloader

    def uninstall(self) -> None:
        self.logs = None
        for name in ("log", "training_step", "_on_before_batch_transfer", "_apply_batch_transfer_handler"):
            self.module.__dict__.pop(name, None)
        self.datamodule.__dict__.pop("train_dataloader", None)

    def _chunked_train_dataloader(self) -> Any:
        loader = self._train_dataloader()
        if not hasattr(loader, "start_position"):
            log.warning("steps_per_execution: %s's train loader is not an in-memory loader; one step per "
                        "Lightning step", type(self.datamodule).__name__)
            return loader
        steps = self.steps
        if steps == 0:  # auto
            parameters = sum(p.numel() for p in self.module.parameters())
            on_cpu = self.module.device.type == "cpu"
            steps = auto_steps(parameters, loader.batch_size, on_cpu)
        trainer = self.module.trainer
        steps_left = (lambda: trainer.max_steps - trainer.global_step) if trainer.max_steps >= 0 else None
        return ChunkedLoader(loader, steps, self.limit, steps_left)

    def _chunk_before_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        return batch if isinstance(batch, Chunk) else self._before_transfer(batch, dataloader_idx)

    def _chunk_apply_transfer(self, batch: Any, device: Any = None, dataloader_idx: int = 0) -> Any:
        return batch if isinstance(batch, Chunk) else self._apply_transfer(batch, device, dataloader_idx)

    # Per fit -----------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logs is None:
            return
        self.trainer = trainer
        optimizers = trainer.optimizers
        self.optimizer = optimizers[0] if len(optimizers) == 1 else None
        schedulers = [c for c in trainer.lr_scheduler_configs if c.interval == "step"]
        if any(c.frequency != 1 or c.reduce_on_plateau for c in schedulers):
            from experiments.errors import UserError

            raise UserError("a step-interval scheduler with frequency != 1 or on plateau cannot run inside "
                            "fused steps; set trainer.steps_per_execution=1")
        self.step_schedulers = [c.scheduler for c in schedulers]
        self.step_checkpoints = [
            c for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and (c._every_n_train_steps > 0 or c._train_time_interval)
        ]
        self.hooks = {
            name: [getattr(c, name) for c in trainer.callbacks if is_overridden(name, c, Callback)]
            + ([getattr(pl_module, name)] if is_overridden(name, pl_module, L.LightningModule) else [])
            for name in _STEP_HOOKS
        }
        self.clip = trainer.gradient_clip_val is not None or is_overridden(
            "configure_gradient_clipping", pl_module, L.LightningModule
        )
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scaler = scaler
        self.world_size = trainer.world_size
        self.progress = trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer
        # What Lightning does to a batch before training on it, for every batch of a chunk: the
        # precision's input conversion (float64 for 64-true) and the hooks that are overridden.
        self.batch_hooks: list[tuple[str, Any]] = []
        if is_overridden("convert_input", trainer.precision_plugin, Precision):
            self.batch_hooks.append(("convert_input", trainer.precision_plugin.convert_input))
        selector = trainer._data_connector._datahook_selector
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
            owner = selector.get_instance(name) if selector is not None else pl_module
            base = L.LightningModule if isinstance(owner, L.LightningModule) else L.LightningDataModule
            if is_overridden(name, owner, base):
                self.batch_hooks.append((name, getattr(owner, name)))
        if self._saved_logs is not None and self.logs is not None:
            self.logs.load_state_dict(self._saved_logs, pl_module.device)
            self._saved_logs = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logs is not None:
            self.logs.flush_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epoch_logs": self.logs.state_dict() if self.logs else {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_logs = state_dict.get("epoch_logs") or None

    # Per chunk ---------------------------------------------------------------------------------

    def _training_step(self, batch: Any, batch_idx: int = 0, *args: Any) -> Any:
        if not isinstance(batch, Chunk):
            return self.training_step(batch, batch_idx, *args)
        logs = self.logs
        assert logs is not None
        logs.active = True
        try:
            last = batch.size - 1
            for i in range(batch.size):
                inner = self._transfer(batch.next_batch())
                if i == last:  # Lightning steps this one, with its own hooks
                    return self._call_training_step(inner, batch.start + i)
                self._step(inner, batch.start + i)
            return None
        finally:
            logs.active = False
            logs.flush_steps()

    def _transfer(self, batch: Any) -> Any:
        for name, hook in self.batch_hooks:
            if name == "transfer_batch_to_device":
                batch = hook(batch, self.module.device, 0)
            elif name == "convert_input":
                batch = hook(batch)
            else:
                batch = hook(batch, 0)
        return batch

    def _call_training_step(self, batch: Any, batch_idx: int) -> Any:
        assert self.logs is not None
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.logs.batch_size = len(first) if isinstance(first, torch.Tensor) and first.ndim else 1
        return self.training_step(batch, batch_idx)

    def _step(self, batch: Any, batch_idx: int) -> None:
        """One optimizer step, in the order of Lightning's automatic optimisation."""
        trainer, module, optimizer, hooks = self.trainer, self.module, self.optimizer, self.hooks
        output = self._call_training_step(batch, batch_idx)
        loss = output["loss"] if isinstance(output, dict) else output
        if loss is None:  # the module skipped this batch, as Lightning allows
            return
        for hook in hooks["on_before_zero_grad"]:
            hook(trainer, module, optimizer) if _is_callback_hook(hook) else hook(optimizer)
        optimizer.zero_grad()
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        for hook in hooks["on_before_backward"]:
            hook(trainer, module, scaled) if _is_callback_hook(hook) else hook(scaled)
        scaled.backward()
        for hook in hooks["on_after_backward"]:
            hook(trainer, module) if _is_callback_hook(hook) else hook()
        if self.world_size > 1:
            # DDP syncs gradients in the backward pass that follows its forward call, i.e. only
            # the last batch of the chunk; the others are averaged here, as DDP would.
            for parameter in module.parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad.div_(self.world_size)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        for hook in hooks["on_before_optimizer_step"]:
            hook(trainer, module, optimizer) if _is_callback_hook(hook) else hook(optimizer)
        if self.clip:
            module.configure_gradient_clipping(
                optimizer, gradient_clip_val=trainer.gradient_clip_val,
                gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            )
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.progress.step.increment_ready()
        self.progress.step.increment_completed()
        for scheduler in self.step_schedulers:
            module.lr_scheduler_step(scheduler, None)
        for checkpoint in self.step_checkpoints:
            checkpoint.on_train_batch_end(trainer, module, output, batch, batch_idx)
        # Counted after the checkpoint, as Lightning counts its own steps after on_train_batch_end
        # (and adds one when it restarts from such a checkpoint).
        trainer.fit_loop.epoch_loop._batches_that_stepped += 1


def _is_callback_hook(hook: Any) -> bool:
    return isinstance(getattr(hook, "__self__", None), Callback)


def _cannot_fuse(module: L.LightningModule, trainer: L.Trainer) -> str | None:
    """Why ``module`` under ``trainer`` can't run fused steps, or None when it can."""
    if not module.automatic_optimization:
        return f"{type(module).__name__} optimises manually"
    for name in _OWN_STEPPING:
        if is_overridden(name, module, L.LightningModule):
            return f"{type(module).__name__} overrides {name}"
    if trainer.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches is not 1"
    if trainer.val_check_interval != 1.0:
        return "trainer.val_check_interval validates inside an epoch"
    return None


def _as_list(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    return [callbacks] if isinstance(callbacks, Callback) else list(callbacks)  # Hydra passes a ListConfig


class Trainer(L.Trainer):
    """Lightning's Trainer with ``steps_per_execution``: K optimizer steps per Lightning step.

    ``steps_per_execution="auto"`` (the default) picks K from the model's size and the batch size
    so that Lightning's per-step cost is hidden (see :func:`auto_steps`); ``1`` is Lightning's own
    loop, untouched. Any other Trainer argument is Lightning's. ``profiler=None`` adds no profiler.
    """

    def __init__(self, *args: Any, steps_per_execution: int | str = AUTO, **kwargs: Any) -> None:
        if steps_per_execution != AUTO and (
            isinstance(steps_per_execution, bool) or not isinstance(steps_per_execution, int) or steps_per_execution < 1
        ):
            from experiments.errors import UserError

            raise UserError(
                f"trainer.steps_per_execution={steps_per_execution!r}: expected a positive integer or 'auto'"
            )
        self._fused = None if steps_per_execution == 1 else _FusedSteps(0 if steps_per_execution == AUTO else int(steps_per_execution))
        if self._fused is not None:
            # First among the callbacks: its on_train_epoch_end logs the epoch's training values
            # before other callbacks read them. Present for test/predict too, so that Lightning
            # finds the callback whose state a checkpoint holds.
            kwargs["callbacks"] = [self._fused, *_as_list(kwargs.get("callbacks"))]
        super().__init__(*args, **kwargs)
        self.steps_per_execution = steps_per_execution
        launcher = self.strategy.launcher
        if launcher is None or not launcher.is_interactive_compatible:
            # Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 so that torch.cuda.is_available()
            # cannot initialise CUDA in a process that forks later. With it, every such call loads the
            # NVML library anew, and torch's optimizers make that call in every step (40 us a step
            # on this project's CPU, 4% of the MNIST primer's step). Only the fork-based launchers
            # (ddp_fork, ddp_notebook: "interactive compatible") need it.
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

    def fit(self, model: L.LightningModule, *args: Any, datamodule: Any = None, **kwargs: Any) -> None:
        fused = self._fused
        if fused is None or not self._can_fuse(model, datamodule, bool(args) or "train_dataloaders" in kwargs):
            return super().fit(model, *args, datamodule=datamodule, **kwargs)
        limit_train_batches = self.limit_train_batches
        # Counted in batches by the chunked loader, not in chunks by Lightning.
        self.limit_train_batches = 1.0
        fused.install(model, datamodule, limit_train_batches if limit_train_batches is not None else 1.0)
        try:
            return super().fit(model, *args, datamodule=datamodule, **kwargs)
        finally:
            fused.uninstall()
            self.limit_train_batches = limit_train_batches

    def _can_fuse(self, model: L.LightningModule, datamodule: Any, own_loaders: bool) -> bool:
        if datamodule is None or own_loaders:
            reason: str | None = "the train loader is passed to fit() directly"
        else:
            reason = _cannot_fuse(model, self)
        if reason is not None:
            log.warning("steps_per_execution: %s; one optimizer step per Lightning step", reason)
        return reason is None


# Other internals ------------------------------------------------------------------------------


def purge_tensorboard_after(logger: Any, step: int) -> None:
    """Make a resumed run's TensorBoard writer hide what the killed run logged after ``step``.

    SummaryWriter's ``purge_step``; Lightning's TensorBoardLogger passes its stored keyword
    arguments on to the writer it creates lazily, and has no public way to add one later.
    """
    if isinstance(logger, TensorBoardLogger):
        logger._kwargs.setdefault("purge_step", step)


def write_tensorboard_hparams(logger: TensorBoardLogger, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """The HPARAMS tab's record, written without re-logging every metric at step 0.

    Lightning's ``log_hyperparams(params, metrics)`` logs each metric again as a scalar at step 0,
    which puts a false first point on every test curve; the summary is written to the logger's own
    file writer instead (``SummaryWriter._get_file_writer``).
    """
    from torch.utils.tensorboard.summary import hparams

    writer = logger.experiment._get_file_writer()
    for summary in hparams(params, metrics):
        writer.add_summary(summary)
    # The HPARAMS tab reads each metric's value from a scalar of the same tag.
    for name, value in metrics.items():
        if name.startswith("best/"):
            logger.experiment.add_scalar(name, value, global_step=step)
    writer.flush()


def optuna_trial(study: Any, number: int) -> Any:
    """The running trial ``number`` of ``study``, as Optuna hands a trial to a worker.

    ``optuna.trial.Trial(study, trial_id)`` is Optuna's own way; the id has no public getter.
    """
    import optuna

    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return None if frozen is None else optuna.trial.Trial(study, frozen._trial_id)
