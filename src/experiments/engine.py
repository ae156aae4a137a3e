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

import contextlib
import copy
import dataclasses
import gc
import logging
import math
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities.model_helpers import is_overridden

log = logging.getLogger(__name__)

AUTO = "auto"
# One Lightning step of ``auto`` chunks does about this many floating-point operations (see
# step_flops): some 100 ms on one core of this project's 2-core CPU, over a hundred times
# Lightning's own cost per step (0.8 ms with a run's callbacks), and still ten updates a second
# of the progress bar.
_AUTO_FLOPS_PER_EXECUTION = 3.2e9
_AUTO_MAX_STEPS = 128
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


def step_flops(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Floating-point operations of one training step on ``inputs``: its forward pass, counted
    by torch's FLOP counter, times 3 for the backward pass. Falls back to 6 per parameter and
    sample where the counter can't follow the model."""
    from torch.utils.flop_counter import FlopCounterMode

    # The counter does not see inside recurrent layers' fused kernels: 2 FLOPs per weight, per
    # sample and per time step, counted from their inputs' shapes.
    recurrent = [0.0]

    def count_recurrent(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            weights = sum(p.numel() for p in module.parameters())
            recurrent[0] += 2.0 * weights * x.shape[0] * x.shape[1]

    hooks = [m.register_forward_hook(count_recurrent) for m in model.modules() if isinstance(m, torch.nn.RNNBase)]
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(inputs)
        flops = 3.0 * (counter.get_total_flops() + recurrent[0])
    except Exception:  # noqa: BLE001 - an estimate is all that is needed here
        flops = 0.0
    finally:
        for hook in hooks:
            hook.remove()
    parameters = sum(p.numel() for p in model.parameters())
    return flops or 6.0 * max(parameters, 1) * len(inputs)


def auto_steps(flops_per_step: float, accelerator_is_cpu: bool) -> int:
    """K for ``steps_per_execution=auto``: enough work per Lightning step to hide its cost.

    Deterministic (a run resumes with the K it started with). On an accelerator a small step is
    bound by kernel launches rather than arithmetic, so K is as large as it goes.
    """
    if not accelerator_is_cpu:
        return _AUTO_MAX_STEPS
    return max(1, min(_AUTO_MAX_STEPS, math.ceil(_AUTO_FLOPS_PER_EXECUTION / max(flops_per_step, 1.0))))


# Below this many FLOPs per step (the MNIST MLP does 2e7, the CNN 2e9), a second intra-op thread
# gains nothing: each tiny matrix product is split across threads that then wait on each other,
# and when another process holds a core, that wait becomes the whole step (3.5x slower).
_THREADS_MIN_FLOPS = 3e8
_THREADS_MAX = 8


def choose_threads(flops_per_step: float | None, processes: int = 1) -> int:
    """Torch intra-op threads for a run: one for small steps; else the idle cores this process
    may use (``os.sched_getaffinity``, less those busy right now), shared with the other
    ``processes`` of the job (DDP ranks, sweep workers). ``OMP_NUM_THREADS``, when set, is the
    user's choice and wins."""
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    if flops_per_step is None or flops_per_step < _THREADS_MIN_FLOPS:
        return 1
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    idle = _idle_cores(cores)
    return max(1, min(_THREADS_MAX, idle // max(processes, 1)))


def _idle_cores(cores: list[int], seconds: float = 0.1) -> int:
    """How many of ``cores`` were idle over the last ``seconds`` (from /proc/stat; all of them
    where that can't be read)."""

    def sample() -> dict[int, tuple[int, int]]:
        times = {}
        with open("/proc/stat") as handle:
            for line in handle:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    values = [int(v) for v in fields]
                    times[int(name[3:])] = (values[3] + values[4], sum(values))  # idle + iowait, all
        return times

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError):
        return len(cores)
    idle = 0.0
    for core in cores:
        if core in before and core in after:
            total = after[core][1] - before[core][1]
            idle += (after[core][0] - before[core][0]) / total if total > 0 else 1.0
    return max(1, round(idle))


# LightningModule.log's other options at their defaults: these don't leave the fast path.
_LOG_DEFAULTS = {"sync_dist_group": None, "add_dataloader_idx": True, "metric_attribute": None, "rank_zero_only": False}


class _EpochLogs:
    """``self.log`` of a training step, summed as Lightning's ResultCollection sums it.

    Lightning adds ``value * batch_size`` to a float tensor and ``batch_size`` to an integer tensor
    on every call, and divides once at the end of the epoch. Here a step only keeps its value and
    batch size; the same products and the same sums, one after another in the same floating-point
    type, are computed when the epoch ends (or a checkpoint needs them) in two tensor operations
    and one NumPy accumulation, and Lightning gets the quotient once per epoch with
    ``batch_size=1`` (x * 1 / 1 == x). Epoch values are bit-identical, and a step spends a few
    microseconds instead of the six tensor operations (a tenth of a small model's step) that
    Lightning's sums cost. Calls this does not fast-path (``on_step`` and ``on_epoch`` together,
    other reductions, non-tensors, metric objects) go straight to Lightning.
    """

    def __init__(self, real_log: Any, module: Any = None) -> None:
        self.real_log = real_log
        self.active = False
        self.batch_size = 1
        # name -> [sum so far, count so far, values since, batch sizes since, flush kwargs]
        self.sums: dict[str, list[Any]] = {}
        self.last_step: dict[str, tuple[Any, dict[str, Any]]] = {}
        # Task.log_sample_metrics of the training steps: (split, outputs, target) not yet computed,
        # and "<split>/<name>" -> [sum of the per-sample values so far, samples so far, device].
        self.module = module
        self.pending_samples: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.sample_sums: dict[str, list[Any]] = {}

    def log_sample_metrics(self, split: str, outputs: torch.Tensor, target: torch.Tensor) -> None:
        """``Task.log_sample_metrics`` while fitting: in a training step, the outputs and targets
        are only kept, and ``Task.sample_metrics`` runs once for all the batches of a chunk (its
        four tensor operations per batch were a twentieth of a small model's step). Elsewhere,
        the task's own method."""
        if not self.active:
            type(self.module).log_sample_metrics(self.module, split, outputs, target)
            return
        # Detached here too: outputs still in their graph would keep it alive until the chunk ends.
        self.pending_samples.append((split, outputs.detach(), target))

    def add_up_samples(self) -> None:
        """Compute the kept batches' per-sample metrics and add them to the epoch's sums, sample
        after sample in float64: the sums don't depend on how the batches were grouped (K, or a
        checkpoint inside a chunk), so fused and unfused runs and resumed ones agree bit for bit."""
        from experiments.tasks.base import per_sample

        pending, self.pending_samples = self.pending_samples, []
        start = 0
        while start < len(pending):
            split, first, _ = pending[start]
            end = start + 1
            while end < len(pending) and pending[end][0] == split and pending[end][1].shape[1:] == first.shape[1:]:
                end += 1
            group = pending[start:end]
            outputs = torch.cat([outputs for _, outputs, _ in group]) if len(group) > 1 else first
            target = torch.cat([target for _, _, target in group]) if len(group) > 1 else group[0][2]
            for name, values in self.module.sample_metrics(outputs, target).items():
                series = per_sample(type(self.module), name, values.detach(), len(target))
                if not len(series):
                    continue
                entry = self.sample_sums.setdefault(f"{split}/{name}", [0.0, 0, values.device])
                numbers = series.to(torch.float64).cpu().numpy()
                entry[0] = float(np.add.accumulate(np.concatenate(([entry[0]], numbers)))[-1])
                entry[1] += len(numbers)
            start = end

    def __call__(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        batch_size: int | None = None,
        **rest: Any,
    ) -> None:
        fast = False
        if self.active:  # else validation, epoch hooks: Lightning's own defaults and batch size
            on_step = True if on_step is None else on_step  # Lightning's defaults in training_step
            on_epoch = False if on_epoch is None else on_epoch
            rest = {k: v for k, v in rest.items() if _LOG_DEFAULTS.get(k, object()) != v}
            # The batch size of the chunk's batch, not of the chunk Lightning holds.
            batch_size = batch_size if batch_size is not None else self.batch_size
            fast = (
                isinstance(value, torch.Tensor)
                and on_step != on_epoch
                and reduce_fx in ("mean", torch.mean)
                and not enable_graph
                and not rest
            )
        if not fast:
            self.real_log(
                name,
                value,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                enable_graph=enable_graph,
                sync_dist=sync_dist,
                batch_size=batch_size,
                **rest,
            )
            return
        options = {"prog_bar": prog_bar, "logger": logger, "sync_dist": sync_dist}
        if on_step:
            self.last_step[name] = (value.detach(), options)
            return
        value = value.detach()
        if value.dtype not in (torch.float32, torch.float64):
            value = value.to(torch.get_default_dtype())
        entry = self.sums.get(name)
        if entry is None:
            entry = self.sums[name] = [
                torch.tensor(0.0, dtype=torch.get_default_dtype(), device=value.device),
                0,
                [],
                [],
                options,
            ]
        entry[2].append(value.reshape(()) if value.ndim else value)
        entry[3].append(batch_size)

    def flush_steps(self) -> None:
        """The last on_step value of each name, once per chunk (Keras: once per execution)."""
        self.add_up_samples()
        last, self.last_step = self.last_step, {}
        for name, (value, options) in last.items():
            self.real_log(name, value, on_step=True, on_epoch=False, batch_size=1, **options)

    def flush_epoch(self) -> None:
        sums, self.sums = self.sums, {}
        for name, entry in sums.items():
            total, count = _add_up(entry)
            count_tensor = torch.tensor(count, device=total.device)
            self.real_log(name, total / count_tensor, on_step=False, on_epoch=True, batch_size=1, **entry[4])
        self.add_up_samples()
        samples, self.sample_sums = self.sample_sums, {}
        for name, (total, count, device) in samples.items():
            mean = torch.tensor(total / count, dtype=torch.get_default_dtype(), device=device)
            self.real_log(name, mean, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name, entry in self.sums.items():
            entry[0], entry[1] = _add_up(entry)
            entry[2], entry[3] = [], []
            state[name] = [entry[0].cpu(), torch.tensor(entry[1]), dict(entry[4])]
        return state

    def samples_state_dict(self) -> dict[str, Any]:
        self.add_up_samples()
        return {name: [total, count] for name, (total, count, _) in self.sample_sums.items()}

    def load_state_dict(self, state: dict[str, Any], samples: dict[str, Any], device: torch.device) -> None:
        self.sums = {name: [t.to(device), int(c), [], [], dict(o)] for name, (t, c, o) in state.items()}
        self.sample_sums = {name: [float(total), int(count), device] for name, (total, count) in samples.items()}


def _add_up(entry: list[Any]) -> tuple[torch.Tensor, int]:
    """The sum and count of an :class:`_EpochLogs` entry: ``total = total + value * size`` for each
    value in turn, in the floating-point type that torch's promotion gives, as Lightning does it."""
    total, count, values, sizes = entry[0], entry[1], entry[2], entry[3]
    if len(values) <= 4:  # Lightning's very operations (an epoch of one batch, as XOR's)
        for value, size in zip(values, sizes):
            total = total + value * size
        return total, count + sum(sizes)
    stacked = torch.stack(values)
    products = (stacked * torch.tensor(sizes, dtype=stacked.dtype, device=stacked.device)).cpu().numpy()
    dtype = torch.promote_types(total.dtype, stacked.dtype)
    numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
    series = np.concatenate([total.detach().cpu().numpy().reshape(1), products]).astype(numpy_dtype)
    # A running sum is sequential by nature: each partial sum rounds as torch's own add would.
    running = np.add.accumulate(series)
    return torch.tensor(running[-1], dtype=dtype, device=total.device), count + sum(sizes)


class _FusedSteps(Callback):
    """Runs the optimizer steps of a chunk; installed on the module by :class:`Trainer` for one fit."""

    def __init__(self, steps: int) -> None:
        self.steps = steps  # 0: auto
        self.limit: int | float = 1.0
        self.logs: _EpochLogs | None = None  # set while installed
        self._in_chunk = False
        self._saved_logs: dict[str, Any] | None = None
        self._saved_samples: dict[str, Any] = {}

    @property
    def state_key(self) -> str:
        return "FusedSteps"

    # Installing and removing ----------------------------------------------------------------

    def install(self, module: L.LightningModule, datamodule: Any, limit: int | float) -> None:
        self.limit = limit
        self.module = module
        self.training_step = module.training_step
        self.logs = _EpochLogs(module.log, module)
        module.log = self.logs  # type: ignore[method-assign,assignment]
        if hasattr(module, "log_sample_metrics"):
            module.log_sample_metrics = self.logs.log_sample_metrics  # type: ignore[assignment]
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
        for name in (
            "log",
            "log_sample_metrics",
            "training_step",
            "_on_before_batch_transfer",
            "_apply_batch_transfer_handler",
        ):
            self.module.__dict__.pop(name, None)
        self.datamodule.__dict__.pop("train_dataloader", None)

    def _chunked_train_dataloader(self) -> Any:
        loader = self._train_dataloader()
        if not hasattr(loader, "start_position"):
            log.warning(
                "steps_per_execution: %s's train loader is not an in-memory loader; one step per Lightning step",
                type(self.datamodule).__name__,
            )
            return loader
        steps = self.steps
        if steps == 0:  # auto
            inputs = loader.tensors[0][: loader.batch_size]
            steps = auto_steps(step_flops(self.module, inputs), self.module.device.type == "cpu")
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

            raise UserError(
                "a step-interval scheduler with frequency != 1 or on plateau cannot run inside "
                "fused steps; set trainer.steps_per_execution=1"
            )
        self.step_schedulers = [c.scheduler for c in schedulers]
        self.step_checkpoints = [
            c
            for c in trainer.checkpoint_callbacks
            if isinstance(c, LightningModelCheckpoint) and (c._every_n_train_steps > 0 or c._train_time_interval)
        ]
        self.hooks = {
            name: [getattr(c, name) for c in trainer.callbacks if is_overridden(name, c, Callback)]  # type: ignore[attr-defined]
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
        if (self._saved_logs is not None or self._saved_samples) and self.logs is not None:
            self.logs.load_state_dict(self._saved_logs or {}, self._saved_samples, pl_module.device)
            self._saved_logs, self._saved_samples = None, {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logs is not None:
            self.logs.flush_epoch()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        _raise_pending_ctrl_c()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        _raise_pending_ctrl_c()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint taken while training still holds the finished progress of the last
        # validation run (2 of 2 batches, say). A run restarted from it twice can take that for a
        # validation that has already run and skip the epoch's validation (Lightning 2.6); taken
        # outside validation, it is one that has not started.
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
        if progress is not None and not trainer.validating:
            progress["current"] = {key: 0 for key in progress["current"]}
            progress["is_last_batch"] = False
        if self._in_chunk:
            _as_if_after_previous_chunk(checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epoch_logs": self.logs.state_dict() if self.logs else {},
            "epoch_samples": self.logs.samples_state_dict() if self.logs else {},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_logs = state_dict.get("epoch_logs") or None
        self._saved_samples = state_dict.get("epoch_samples") or {}

    # Per chunk ---------------------------------------------------------------------------------

    def _training_step(self, batch: Any, batch_idx: int = 0, *args: Any) -> Any:
        if not isinstance(batch, Chunk):
            return self.training_step(batch, batch_idx, *args)
        logs = self.logs
        assert logs is not None
        logs.active = True
        self._in_chunk = True
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
            self._in_chunk = False
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
        assert optimizer is not None  # fused steps need exactly one optimizer (see _can_fuse)
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
                optimizer,
                gradient_clip_val=trainer.gradient_clip_val,
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
        for checkpoint in self.step_checkpoints:  # Lightning's own rule: never an epoch's last batch here
            LightningModelCheckpoint.on_train_batch_end(checkpoint, trainer, module, output, batch, batch_idx)
        # Counted after the checkpoint, as Lightning counts its own steps after on_train_batch_end
        # (and adds one when it restarts from such a checkpoint).
        trainer.fit_loop.epoch_loop._batches_that_stepped += 1


def _as_if_after_previous_chunk(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint taken inside a chunk restart the way Lightning restarts one taken at the
    end of a training batch (``on_train_batch_end``).

    Lightning never checkpoints inside a training step, and restarts from such a checkpoint with
    its batch counters one apart for good (``total.ready`` ahead of ``total.completed``), which
    makes the next restart misjudge where it stopped and skip an epoch's validation. Here the
    chunk in progress counts as not started, and the one before it as ended but not yet completed,
    which Lightning completes when it restarts. The loader's own position, saved with the
    checkpoint, says where inside the chunk training goes on; and the logging step count is one
    short, as Lightning saves it at a batch end.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loops.get("epoch_loop.batch_progress")
    if progress is None:
        return
    for part in ("total", "current"):
        done = progress[part]["completed"]
        progress[part].update(ready=done, started=done, processed=done, completed=done - 1)
    progress["is_last_batch"] = False


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


_ctrl_c = {"pending": False}


@contextlib.contextmanager
def _ctrl_c_at_batch_ends() -> Iterator[None]:
    """While fitting, Ctrl-C (SIGINT) takes effect at the next batch end instead of wherever the
    interpreter happens to be.

    Python raises KeyboardInterrupt at any bytecode, also inside a finaliser (a weakref callback),
    where it is printed as "Exception ignored" and lost, and the run goes on. Here the signal only
    marks the interruption, and :class:`_FusedSteps` raises it at the next training or validation
    batch end, where Lightning's own KeyboardInterrupt handling takes over. A second Ctrl-C
    raises at once. Outside ``fit`` (and off the main thread) Python's own handler stays.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def mark(signum: int, frame: Any) -> None:
        if _ctrl_c["pending"]:
            raise KeyboardInterrupt
        _ctrl_c["pending"] = True

    _ctrl_c["pending"] = False
    signal.signal(signal.SIGINT, mark)
    try:
        yield
    finally:
        _ctrl_c["pending"] = False
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    """While fitting, Python's cyclic garbage collector leaves alone the objects that existed
    before (``gc.freeze``), and takes them back when fitting ends (``gc.unfreeze``).

    A process that has imported torch, Lightning and Hydra holds some 450,000 objects, and every
    full collection walks all of them: the training steps' small allocations trigger one or two
    full collections per fit, each a 0.1-0.2 s pause (3% of the MNIST primer's fit). Objects
    created while fitting are still collected as before. A process that has frozen objects of its
    own keeps its choice: nothing is frozen or unfrozen here then.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _raise_pending_ctrl_c() -> None:
    if _ctrl_c["pending"]:
        _ctrl_c["pending"] = False
        raise KeyboardInterrupt


def _as_list(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    return [callbacks] if isinstance(callbacks, Callback) else list(callbacks)  # Hydra passes a ListConfig


class Trainer(L.Trainer):
    """Lightning's Trainer with ``steps_per_execution``: K optimizer steps per Lightning step.

    ``steps_per_execution="auto"`` (the default) picks K from the model's size and the batch size
    so that Lightning's per-step cost is hidden (see :func:`auto_steps`); ``1`` pays Lightning's
    cost at every step. Either way the training values of an epoch are summed here, so a run
    resumed inside an epoch logs the same epoch means as one never stopped (Lightning's own
    logging restarts those sums). Any other Trainer argument is Lightning's.
    """

    def __init__(
        self, *args: Any, steps_per_execution: int | str = AUTO, num_threads: int | str = AUTO, **kwargs: Any
    ) -> None:
        if steps_per_execution != AUTO and (
            isinstance(steps_per_execution, bool) or not isinstance(steps_per_execution, int) or steps_per_execution < 1
        ):
            from experiments.errors import UserError

            raise UserError(
                f"trainer.steps_per_execution={steps_per_execution!r}: expected a positive integer or 'auto'"
            )
        if num_threads != AUTO and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            from experiments.errors import UserError

            raise UserError(f"trainer.num_threads={num_threads!r}: expected a positive integer or 'auto'")
        # 'auto' here knows nothing of the model: one thread (train resolves it from the model first).
        torch.set_num_threads(choose_threads(None) if num_threads == AUTO else int(num_threads))
        self._fused = _FusedSteps(0 if steps_per_execution == AUTO else int(steps_per_execution))
        # First among the callbacks: its on_train_epoch_end logs the epoch's training values
        # before other callbacks read them. Present for test/predict too, so that Lightning
        # finds the callback whose state a checkpoint holds.
        kwargs["callbacks"] = [self._fused, *_as_list(kwargs.get("callbacks"))]
        super().__init__(*args, **kwargs)
        self.steps_per_execution = steps_per_execution
        _skip_repeated_result_moves()
        launcher = self.strategy.launcher
        if launcher is None or not launcher.is_interactive_compatible:
            # Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 so that torch.cuda.is_available()
            # cannot initialise CUDA in a process that forks later. With it, every such call loads the
            # NVML library anew, and torch's optimizers make that call in every step (40 us a step
            # on this project's CPU, 4% of the MNIST primer's step). Only the fork-based launchers
            # (ddp_fork, ddp_notebook: "interactive compatible") need it.
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

    def fit(self, model: L.LightningModule, *args: Any, datamodule: Any = None, **kwargs: Any) -> None:
        with _ctrl_c_at_batch_ends(), _long_lived_objects_frozen():
            fused = self._fused
            if not self._can_fuse(model, datamodule, bool(args) or "train_dataloaders" in kwargs):
                return super().fit(model, *args, datamodule=datamodule, **kwargs)  # type: ignore[misc]
            limit_train_batches = self.limit_train_batches
            # Counted in batches by the chunked loader, not in chunks by Lightning.
            self.limit_train_batches = 1.0
            fused.install(model, datamodule, limit_train_batches if limit_train_batches is not None else 1.0)
            try:
                return super().fit(model, *args, datamodule=datamodule, **kwargs)  # type: ignore[misc]
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


# Checkpoints written by time ------------------------------------------------------------------


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint that writes to disk at most every ``min_write_interval`` seconds.

    On XOR (one batch of four samples per epoch) writing ``best.ckpt`` and ``last.ckpt`` at every
    epoch was half of the fit time. A monitoring checkpoint (``best.ckpt``) is still *taken* at
    every improvement, as a copy in memory, and the copy is written once the interval has passed
    since the last write, and when fitting ends, fails or is interrupted. Its pending copy rides
    in every checkpoint Lightning writes (this callback's state), so ``last.ckpt`` holds the
    best-so-far weights even when ``best.ckpt`` on disk is older, and a resumed run writes them.
    A checkpoint of the latest state (``monitor=None``: ``last.ckpt``) is taken and written when
    the interval has passed and at the epoch where fitting stops. A kill, a failure or an
    interruption loses at most the last interval, which an exact resume recomputes.
    ``min_write_interval=0`` is Lightning's behaviour: every save is written at once.

    A step checkpoint (``every_n_train_steps``) due at the last batch of an epoch is taken at the
    end of that epoch instead, after its validation and ``on_train_epoch_end``: Lightning,
    restarting from a checkpoint taken at an epoch's last batch, goes on with the next epoch and
    skips what was left of that one (its validation, its history row).
    """

    def __init__(self, *args: Any, min_write_interval: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if min_write_interval < 0:
            raise ValueError(f"min_write_interval must be >= 0 seconds, got {min_write_interval}")
        self.min_write_interval = min_write_interval
        self._pending: tuple[str, dict[str, Any]] | None = None
        self._last_write = -math.inf
        self._taking = False
        self._owed = False

    def _monitor_candidates(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        # Lightning deep-copies every logged value at each save (a tenth of an XOR run); a clone of
        # each tensor is what keeps the kept scores safe from later in-place updates.
        candidates = {
            k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in trainer.callback_metrics.items()
        }
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (
            trainer.received_sigterm
            and self.monitor is None
            and self._every_n_train_steps == 0
            and not trainer.is_last_batch
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            # SIGTERM (preemption): Lightning raises at the end of this batch; take last.ckpt here, at
            # the point where its own step checkpoints are taken, so that the resume loses nothing.
            # (At an epoch's last batch it is taken at the epoch's end: see _stops_after_this_epoch.)
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        if (
            trainer.is_last_batch
            and self._every_n_train_steps > 0
            and trainer.global_step % self._every_n_train_steps == 0
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._owed = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._owed:
            self._owed = False
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self.min_write_interval <= 0:
            return super()._save_checkpoint(trainer, filepath)
        due = time.monotonic() - self._last_write >= self.min_write_interval
        if self.monitor is None:
            # The latest state (last.ckpt) is taken only when it is written: when the interval has
            # passed, and at the epoch where the run stops. Copying it at every epoch only to drop
            # the copy at the next cost a tenth of an XOR run.
            if due or _stops_after_this_epoch(trainer):
                super()._save_checkpoint(trainer, filepath)
                self._last_write = time.monotonic()
            return None
        self._taking = True
        try:
            checkpoint = _own_tensors(trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only))
        finally:
            self._taking = False
        self._pending = (filepath, checkpoint)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if due:
            self.write_pending(trainer)
        return None

    def write_pending(self, trainer: L.Trainer) -> None:
        """Write the checkpoint taken last, if it is not on disk yet."""
        if self._pending is None:
            return
        filepath, checkpoint = self._pending
        step = checkpoint.get("global_step", -1)
        if any(
            c is not self and c._last_checkpoint_saved == filepath and c._last_global_step_saved > step
            for c in trainer.checkpoint_callbacks
            if isinstance(c, LightningModelCheckpoint)
        ):
            self._pending = None  # a step checkpoint wrote a later state to the same file
            return
        trainer.strategy.save_checkpoint(checkpoint, filepath)
        self._pending = None
        self._last_write = time.monotonic()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.write_pending(trainer)  # a resumed run's best-so-far weights, carried by last.ckpt

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.write_pending(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self.write_pending(trainer)  # taken at a consistent point, before whatever failed

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.monitor is not None and self._pending is not None and not self._taking:
            state["pending"] = {"path": self._pending[0], "checkpoint": self._pending[1]}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pending = state_dict.get("pending")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "pending"})
        if pending and Path(pending["path"]).parent == Path(self.dirpath or ""):
            self._pending = (pending["path"], pending["checkpoint"])


def _stops_after_this_epoch(trainer: L.Trainer) -> bool:
    """Whether fitting ends with the epoch that is ending (max_epochs, max_steps or a stop request)."""
    last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    # SIGTERM: Lightning raises once this epoch has ended.
    stopping = trainer.should_stop or trainer.received_sigterm
    return bool(stopping or last_epoch or 0 <= trainer.max_steps <= trainer.global_step)


def _own_tensors(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint that training can't change: copies of the weights and optimizer state.

    Those are the only parts of what ``dump_checkpoint`` returns that refer to live tensors that
    training updates in place; everything else is built anew by each ``state_dict()`` call. (A
    deep copy of the whole checkpoint also copies the history rows, so costs grow with epochs.)
    """
    owned = dict(checkpoint)
    if "state_dict" in owned:
        owned["state_dict"] = {k: v.detach().clone() for k, v in owned["state_dict"].items()}
    if "optimizer_states" in owned:
        owned["optimizer_states"] = [
            {
                **state,
                "state": {
                    i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in per.items()}
                    for i, per in state["state"].items()
                },
            }
            for state in owned["optimizer_states"]
        ]
    if "lr_schedulers" in owned:
        owned["lr_schedulers"] = copy.deepcopy(owned["lr_schedulers"])
    return owned


# Other internals ------------------------------------------------------------------------------


def is_lightning_sigterm(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is how Lightning ends a run on SIGTERM.

    Its loops raise ``SIGTERMException``, a ``SystemExit`` with no code, which would otherwise
    pass for a clean exit (code 0); it lives in ``lightning.pytorch.utilities.exceptions``.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    seen: list[BaseException] = []
    while err is not None and err not in seen:
        if isinstance(err, SIGTERMException):
            return True
        seen.append(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def _skip_repeated_result_moves() -> None:
    """Make each ``self.log`` call skip moving its stored result to the device it is already on.

    Lightning's ``_ResultCollection.log`` calls ``_ResultMetric.to(value.device)`` on every
    ``self.log``, and that walks the stored result's whole ``__dict__`` with
    ``apply_to_collection`` even when nothing moves: 85% of ``self.log``'s cost, and 15% of an
    XOR run (300 validations, a few values each). Its walk also asks of each of the dozens of
    objects in that ``__dict__`` whether it is a torchmetrics ``Metric``, an abstract class with
    some 250 subclasses: the first time a class is asked, Python checks it against every one of
    them, which made the first ``self.log`` of a process take 0.2 s (the primer's sanity check).
    The wrapper remembers the device of the last move it made (or asked for positionally) and
    returns at once when the same device is asked for again; a result whose tensors all sit on
    the device asked for (a new one, on the CPU) is not walked by Lightning at all. Any other
    call (keyword arguments, another device, ``cpu()``) goes to Lightning's own ``to``, which
    moves everything as before. Installed once per process, by :class:`Trainer`.
    """
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    lightning_to = _ResultMetric.to
    if getattr(lightning_to, "skips_repeated_moves", False):
        return

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        positional = len(args) == 1 and not kwargs
        if positional and self.__dict__.get("_moved_to") == args[0]:
            return self
        if positional and isinstance(args[0], (torch.device, str)) and _all_tensors_on(self, torch.device(args[0])):
            moved = self
        else:
            moved = lightning_to(self, *args, **kwargs)
        self.__dict__["_moved_to"] = args[0] if positional else None
        return moved

    to.skips_repeated_moves = True  # type: ignore[attr-defined]
    _ResultMetric.to = to  # type: ignore[method-assign]


def _all_tensors_on(result: Any, device: torch.device) -> bool:
    """Whether every tensor that Lightning's ``_ResultMetric.to`` would move is on ``device``
    already: the tensors in the result's ``__dict__``, in its containers and dataclasses, and in
    the metrics (modules) it holds. Only plain containers, tensors and modules are looked into, so
    no class is checked against torchmetrics' abstract ``Metric`` (see _skip_repeated_result_moves)."""
    seen: set[int] = set()
    pending: list[Any] = [result]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            if item.device != device:
                return False
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.nn.Module):
            pending.extend(item.__dict__.values())
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            pending.extend(getattr(item, field.name) for field in dataclasses.fields(item))
    return True


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger that flushes its event file at most every ``flush_interval`` seconds.

    Lightning calls ``save()`` after every ``log_metrics``: the writer's flush (a wait for its
    thread and the disk) and a look on disk for ``hparams.yaml``, once per epoch, cost 8% of an
    XOR run (300 one-batch epochs). The writer's own thread still writes events as they come;
    this only spaces the flushes, and the last one comes when the run ends, however it ends
    (``finalize``). A SIGKILL can lose the last ``flush_interval`` seconds of curves, which an
    exact resume logs again. ``flush_interval=0`` is Lightning's behaviour.
    """

    def __init__(self, *args: Any, flush_interval: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, got {flush_interval}")
        self.flush_interval = flush_interval
        self._last_save = -math.inf

    def save(self) -> None:
        now = time.monotonic()
        if now - self._last_save >= self.flush_interval:
            super().save()
            self._last_save = now

    def finalize(self, status: str) -> None:
        self._last_save = -math.inf  # the last flush is never skipped
        super().finalize(status)


def add_png_to_tensorboard(writer: Any, tag: str, png: bytes, step: int) -> None:
    """An encoded PNG image, as it is, in the event file of a TensorBoard ``SummaryWriter``.

    torch's ``add_image`` takes pixels and encodes them again (and ``add_figure`` draws the figure
    again): for the learning curves at the end of every fit, decoding and encoding the picture
    took a third as long as drawing it. TensorBoard's image summary holds the PNG's own bytes;
    ``_get_file_writer`` is how torch's ``SummaryWriter`` itself writes a summary (torch 2.x).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk, right after the signature
    channels = {0: 1, 4: 2, 2: 3, 6: 4}.get(png[25], 4)  # PNG colour type -> TensorBoard colorspace
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


def purge_tensorboard_after(logger: Any, step: int) -> None:
    """Make a resumed run's TensorBoard writer hide what the killed run logged after ``step``.

    SummaryWriter's ``purge_step``; Lightning's TensorBoardLogger passes its stored keyword
    arguments on to the writer it creates lazily, and has no public way to add one later.
    """
    if isinstance(logger, LightningTensorBoardLogger):
        logger._kwargs.setdefault("purge_step", step)


def write_tensorboard_hparams(
    logger: LightningTensorBoardLogger, params: dict[str, Any], metrics: dict[str, float], step: int
) -> None:
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
