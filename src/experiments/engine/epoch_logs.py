"""The training values of an epoch, summed as Lightning sums them, but once per epoch.

``self.log`` in a training step costs more than a small model's step. While the engine fits, a
training step only keeps what it logs; :class:`EpochLogs` adds it up when the epoch ends (or a
checkpoint needs it) and hands Lightning the epoch's values once. Per-sample metrics
(``Task.sample_metrics``) are kept the same way and computed once per chunk of steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# LightningModule.log's other options at their defaults: these don't leave the fast path.
_LOG_DEFAULTS = {"sync_dist_group": None, "add_dataloader_idx": True, "metric_attribute": None, "rank_zero_only": False}


class EpochLogs:
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
            total, count = add_up(entry)
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
            entry[0], entry[1] = add_up(entry)
            entry[2], entry[3] = [], []
            state[name] = [entry[0].cpu(), torch.tensor(entry[1]), dict(entry[4])]
        return state

    def samples_state_dict(self) -> dict[str, Any]:
        self.add_up_samples()
        return {name: [total, count] for name, (total, count, _) in self.sample_sums.items()}

    def load_state_dict(self, state: dict[str, Any], samples: dict[str, Any], device: torch.device) -> None:
        self.sums = {name: [t.to(device), int(c), [], [], dict(o)] for name, (t, c, o) in state.items()}
        self.sample_sums = {name: [float(total), int(count), device] for name, (total, count) in samples.items()}


def add_up(entry: list[Any]) -> tuple[torch.Tensor, int]:
    """The sum and count of an :class:`EpochLogs` entry: ``total = total + value * size`` for each
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


def per_sample(kind: type, name: str, values: torch.Tensor, samples: int) -> torch.Tensor:
    """``values`` of ``kind.sample_metrics`` as one value per sample, or a one-line error: a batch
    mean in their place would be averaged per chunk of batches, and change with its size."""
    flat = values.reshape(-1)
    if len(flat) != samples:
        raise ValueError(
            f"{kind.__name__}.sample_metrics()[{name!r}] has shape {tuple(values.shape)} for {samples} samples; "
            "it must give one value per sample (return the values before taking their mean)"
        )
    return flat
