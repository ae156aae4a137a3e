"""The one decider of ``auto``: how many optimizer steps per Lightning step (``steps_per_execution``)
and how many torch threads (``num_threads``) a fit uses.

Plain numbers in, plain numbers out: the work of one training step (:func:`step_flops`), the
device, and how many processes share the machine's cores. :meth:`experiments.engine.Trainer.settle`
is the only caller; a run's ``config.yaml`` shows what it chose.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from experiments.errors import UserError

AUTO = "auto"
# One Lightning step of ``auto`` chunks does about this many floating-point operations (see
# step_flops): some 100 ms on one core of this project's 2-core CPU, over a hundred times
# Lightning's own cost per step (0.8 ms with a run's callbacks), and still ten updates a second
# of the progress bar.
_AUTO_FLOPS_PER_EXECUTION = 3.2e9
_AUTO_MAX_STEPS = 128


def step_flops(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Floating-point operations of one training step on ``inputs``: its forward pass, counted
    by torch's FLOP counter, times 3 for the backward pass. Falls back to 6 per parameter and
    sample where the counter can't follow the model."""
    from torch.utils.flop_counter import FlopCounterMode  # 0.14 s to import: only when a step is counted

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


def decide(
    steps_per_execution: int | str,
    num_threads: int | str,
    flops_per_step: float | None,
    accelerator_is_cpu: bool,
    processes: int = 1,
) -> tuple[int, int]:
    """``steps_per_execution`` and ``num_threads`` with ``auto`` replaced by a number; numbers are
    kept as they are. Without a FLOP count (a data module that does not say what it yields), auto
    is one step per Lightning step and one thread."""
    if steps_per_execution == AUTO:
        steps = auto_steps(flops_per_step, accelerator_is_cpu) if flops_per_step is not None else 1
    else:
        steps = int(steps_per_execution)
    threads = choose_threads(flops_per_step, processes) if num_threads == AUTO else int(num_threads)
    return steps, threads


# More threads than any machine has cores: OpenMP would try to start them all (100000 of them end
# the process with "libgomp: Out of memory", not a line).
MAX_THREADS = 1024


def check_setting(name: str, value: Any) -> None:
    """Refuse a ``steps_per_execution`` or ``num_threads`` that is neither ``auto`` nor a positive
    integer, and more than :data:`MAX_THREADS` threads."""
    if value != AUTO and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"trainer.{name}={value!r}: expected a positive integer or 'auto'")
    if name == "num_threads" and value != AUTO and value > MAX_THREADS:
        raise UserError(
            f"trainer.num_threads={value}: more threads than any machine has cores (at most {MAX_THREADS}); "
            f"pass auto, or at most the {os.cpu_count()} cores of this machine"
        )
