"""Process tricks of a fit, each named, each undone when the fit ends.

The engine's :class:`~experiments.engine.Trainer` applies them while it fits, validates, tests or
predicts (:func:`fitting_process_state`); outside those calls the process is as the caller left it,
so a plain ``lightning.Trainer`` in the same process runs on Lightning's own code.

- :func:`threads`: the torch intra-op threads that ``num_threads`` settled on.
- :func:`long_lived_objects_frozen`: ``gc.freeze`` of the objects that existed before.
- :func:`nvml_check_off`: no NVML load on every ``torch.cuda.is_available()``.
- :func:`repeated_result_moves_skipped`: ``self.log`` skips re-moving a result to its device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import (  # private: lightning 2.6
    _ResultMetric,
)


@contextlib.contextmanager
def fitting_process_state(num_threads: int, fork_safe_cuda_check: bool) -> Iterator[None]:
    """Every trick below, for the duration of a fit (or test, or predict).

    ``fork_safe_cuda_check``: the strategy forks processes later (``ddp_fork``, ``ddp_notebook``),
    which need Lightning's fork-safe CUDA check to stay on."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(threads(num_threads))
        stack.enter_context(long_lived_objects_frozen())
        if not fork_safe_cuda_check:
            stack.enter_context(nvml_check_off())
        stack.enter_context(repeated_result_moves_skipped())
        yield


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``count`` while inside, and the caller's number after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
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


_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


@contextlib.contextmanager
def nvml_check_off() -> Iterator[None]:
    """``PYTORCH_NVML_BASED_CUDA_CHECK`` unset while inside, and as it was after.

    Importing Lightning sets it to 1 so that ``torch.cuda.is_available()`` cannot initialise CUDA
    in a process that forks later. With it, every such call loads the NVML library anew, and
    torch's optimizers make that call in every step (40 us a step on this project's CPU, 4% of
    the MNIST primer's step). Only the fork-based launchers need it (see
    :func:`fitting_process_state`).
    """
    before = os.environ.pop(_NVML_CHECK, None)
    try:
        yield
    finally:
        if before is not None:
            os.environ[_NVML_CHECK] = before


@contextlib.contextmanager
def repeated_result_moves_skipped() -> Iterator[None]:
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
    moves everything as before. Lightning's own ``to`` is back in place when the context ends.
    """
    lightning_to = _ResultMetric.to
    if getattr(lightning_to, "skips_repeated_moves", False):  # already inside: the outer one undoes it
        yield
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
    try:
        yield
    finally:
        _ResultMetric.to = lightning_to  # type: ignore[method-assign]


def _all_tensors_on(result: Any, device: torch.device) -> bool:
    """Whether every tensor that Lightning's ``_ResultMetric.to`` would move is on ``device``
    already: the tensors in the result's ``__dict__``, in its containers and dataclasses, and in
    the metrics (modules) it holds. Only plain containers, tensors and modules are looked into, so
    no class is checked against torchmetrics' abstract ``Metric`` (see repeated_result_moves_skipped)."""
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
