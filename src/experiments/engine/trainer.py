"""Lightning's Trainer with ``steps_per_execution`` and ``num_threads``, and the one place where
``auto`` becomes a number (:meth:`Trainer.settle`)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.fit_loop import _FitLoop as _LightningFitLoop  # private: lightning 2.6
from lightning.pytorch.loops.loop import _Loop  # private: lightning 2.6
from lightning.pytorch.trainer.states import TrainerFn

from experiments.engine.checkpointing import AtomicCheckpointIO
from experiments.engine.epochs import OwnEpochs
from experiments.engine.fused import FusedSteps, cannot_fuse
from experiments.engine.process import fitting_process_state
from experiments.engine.tuning import AUTO, check_setting, decide, step_flops
from experiments.errors import UserError
from experiments.signals import ctrl_c_at_batch_ends

log = logging.getLogger(__name__)

# Lightning warns when an epoch has fewer training batches than log_every_n_steps. Under fused
# steps it counts chunks, not batches, so the warning is ours and not true (FusedSteps keeps
# Lightning's step counter, by which it logs); and the tasks log their training values per epoch
# (Task.log_split), so an epoch of one batch (XOR) loses nothing by it either.
_CHUNKS_BELOW_LOG_INTERVAL = r"The number of training batches \(\d+\) is smaller than the logging interval"
# Lightning warns of checkpoints already in the folder it writes to: a resumed run's own.
_CHECKPOINTS_FOLDER_NOT_EMPTY = r"Checkpoint directory .* exists and is not empty"
# Lightning hints at srun on every run of a machine that has SLURM installed; outside a SLURM job
# there is nothing to run it in.
_SRUN_HINT = r"The `srun` command is available on your system but is not used"
# The engine's own arguments of :class:`Trainer`; every other one is Lightning's.
ENGINE_SETTINGS = ("steps_per_execution", "num_threads", "processes", "own_epoch_loop")


def lightning_settings(settings: Any) -> dict[str, Any]:
    """The arguments of a trainer config (a mapping such as ``cfg.trainer``, resolved) that
    Lightning's own ``Trainer`` takes: without ``_target_`` and the engine's own settings. What a
    bare Lightning Trainer with a run's settings is built from (``scripts/bench_*.py``)."""
    return {k: v for k, v in dict(settings).items() if k != "_target_" and k not in ENGINE_SETTINGS}


class Trainer(L.Trainer):
    """Lightning's Trainer with ``steps_per_execution``: K optimizer steps per Lightning step.

    ``steps_per_execution="auto"`` (the default) picks K from the model's size and the batch size
    so that Lightning's per-step cost is hidden (:func:`experiments.engine.tuning.auto_steps`);
    ``1`` pays Lightning's cost at every step. Either way the training values of an epoch are
    summed here, so a run resumed inside an epoch logs the same epoch means as one never stopped
    (Lightning's own logging restarts those sums). ``num_threads`` is torch's intra-op threads
    while fitting, testing or predicting (``auto``: one for small models, else the idle cores
    shared among ``processes``, the processes of this job on the machine). Both are decided once,
    by :meth:`settle`. ``own_epoch_loop``: the engine's own epoch loop on Lightning's hooks, for
    in-memory data (:mod:`experiments.engine.epochs`); false runs Lightning's. Any other argument
    is Lightning's.
    """

    def __init__(
        self,
        *args: Any,
        steps_per_execution: int | str = AUTO,
        num_threads: int | str = AUTO,
        processes: int = 1,
        own_epoch_loop: bool = True,
        **kwargs: Any,
    ) -> None:
        check_setting("steps_per_execution", steps_per_execution)
        check_setting("num_threads", num_threads)
        self._fused = FusedSteps()
        # First among the callbacks: its on_train_epoch_end logs the epoch's training values
        # before other callbacks read them. Present for test/predict too, so that Lightning
        # finds the callback whose state a checkpoint holds.
        kwargs["callbacks"] = [self._fused, *_as_list(kwargs.get("callbacks"))]
        if isinstance(kwargs.get("max_time"), Mapping):  # Lightning's Timer takes a plain dict, not Hydra's mapping
            kwargs["max_time"] = dict(kwargs["max_time"])
        with _quiet_outside_slurm_jobs():
            kwargs["plugins"] = _without_slurm_requeue(kwargs.get("plugins"))
            super().__init__(*args, **kwargs)
        if type(self.fit_loop) is _LightningFitLoop:  # not a loop the user chose
            self.fit_loop.__class__ = _ExactFitLoop
        if type(self.strategy.checkpoint_io) is TorchCheckpointIO:  # not a writer the user chose
            self.strategy.checkpoint_io = AtomicCheckpointIO()
        self.steps_per_execution = steps_per_execution
        self.num_threads = num_threads
        self.processes = max(1, int(processes))
        self.own_epoch_loop = bool(own_epoch_loop)
        self._settled: tuple[int, int] | None = None
        self._sigterm_checkpointed = False

    @property
    def received_sigterm(self) -> bool:
        """Whether Lightning's loops should stop for SIGTERM: only once ``last.ckpt`` has been taken
        at a batch or epoch end after it (:meth:`sigterm_checkpointed`), when a checkpoint callback
        takes it there (``takes_sigterm_checkpoint``). Lightning checks the signal at several
        points after the checkpoint callbacks have run (after the epoch-end hooks, inside
        validation); stopping there left ``last.ckpt`` behind by up to its ``min_write_interval``
        (207 steps of XOR once in 8 SIGTERMs). Now the run goes on to the next batch or epoch end,
        where the checkpoint is taken, and stops there: a SIGTERM loses nothing. In a distributed
        run every rank follows rank 0's signal (the checkpoint callback asks all of them at once),
        where Lightning let each rank stop on its own signal, and ranks that stopped at different
        batches aborted or waited forever."""
        received = self.sigterm_pending
        if not received or self._sigterm_checkpointed or self.state.fn != TrainerFn.FITTING:
            return received
        callbacks = getattr(self, "callbacks", [])  # Lightning's callback connector sets them
        return not any(getattr(c, "takes_sigterm_checkpoint", False) for c in callbacks)

    @property
    def sigterm_pending(self) -> bool:
        """SIGTERM arrived (Lightning's signal handler saw it), whether or not the loops stop for it yet."""
        return bool(L.Trainer.received_sigterm.fget(self))  # type: ignore[attr-defined]

    def sigterm_checkpointed(self) -> None:
        """``last.ckpt`` holds the state where SIGTERM stops the run: Lightning's loops may stop now."""
        self._sigterm_checkpointed = True

    def settle(self, model: torch.nn.Module, datamodule: Any = None) -> tuple[int, int]:
        """``(steps_per_execution, num_threads)`` with ``auto`` decided from one FLOP count of a
        training step (a zero batch of the data module's shape and batch size, the model in eval
        mode so that neither batch-norm statistics nor random draws change), the device and
        ``processes``. Decided once: a later call (``fit`` calls it) returns the same numbers."""
        if self._settled is None:
            flops = None
            if AUTO in (self.steps_per_execution, self.num_threads):
                flops = _step_flops_of(model, datamodule)
            on_cpu = self.strategy.root_device.type == "cpu"
            self._settled = decide(self.steps_per_execution, self.num_threads, flops, on_cpu, self.processes)
            self.steps_per_execution, self.num_threads = self._settled
        return self._settled

    @contextlib.contextmanager
    def _process_state(self, model: Any, datamodule: Any) -> Iterator[None]:
        _, threads = self.settle(model, datamodule)
        launcher = self.strategy.launcher
        fork_safe = launcher is not None and launcher.is_interactive_compatible  # ddp_fork, ddp_notebook
        with fitting_process_state(threads, fork_safe_cuda_check=fork_safe), _quiet_outside_slurm_jobs():
            yield

    def fit(self, model: L.LightningModule, *args: Any, datamodule: Any = None, **kwargs: Any) -> None:
        steps, _ = self.settle(model, datamodule)
        with ctrl_c_at_batch_ends(), self._process_state(model, datamodule), warnings.catch_warnings():
            if kwargs.get("ckpt_path") is not None:  # a resumed run's folder holds its own checkpoints
                warnings.filterwarnings("ignore", message=_CHECKPOINTS_FOLDER_NOT_EMPTY)
            fused = self._fused
            fused.steps = steps
            if not self._can_fuse(model, datamodule, bool(args) or "train_dataloaders" in kwargs, steps):
                return super().fit(model, *args, datamodule=datamodule, **kwargs)  # type: ignore[misc]
            limit_train_batches = self.limit_train_batches
            # Counted in batches by the chunked loader, not in chunks by Lightning.
            self.limit_train_batches = 1.0
            fused.install(model, datamodule, limit_train_batches if limit_train_batches is not None else 1.0)
            own = OwnEpochs(self, fused) if self.own_epoch_loop else None
            if own is not None:
                own.install()
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_CHUNKS_BELOW_LOG_INTERVAL)
                    return super().fit(model, *args, datamodule=datamodule, **kwargs)  # type: ignore[misc]
            finally:
                if own is not None:
                    own.uninstall()
                fused.uninstall()
                self.limit_train_batches = limit_train_batches

    def validate(self, model: Any = None, *args: Any, **kwargs: Any) -> Any:
        with self._process_state(model, kwargs.get("datamodule")):
            return super().validate(model, *args, **kwargs)

    def test(self, model: Any = None, *args: Any, **kwargs: Any) -> Any:
        with self._process_state(model, kwargs.get("datamodule")):
            return super().test(model, *args, **kwargs)

    def predict(self, model: Any = None, *args: Any, **kwargs: Any) -> Any:
        with self._process_state(model, kwargs.get("datamodule")):
            return super().predict(model, *args, **kwargs)

    def _can_fuse(self, model: L.LightningModule, datamodule: Any, own_loaders: bool, steps: int) -> bool:
        if datamodule is None or own_loaders:
            reason: str | None = "the train loader is passed to fit() directly"
        else:
            reason = cannot_fuse(model, self)
        if reason is not None and steps > 1:  # with 1 step per Lightning step nothing falls back
            log.warning("steps_per_execution: %s; one optimizer step per Lightning step", reason)
        return reason is None


# The most rows of the zero batch on which a training step's FLOPs are counted.
_PROBE_BATCH = 512


class _ExactFitLoop(_LightningFitLoop):
    """Lightning's fit loop, restarting from an epoch's end as an epoch-based run does, also with
    ``max_steps``.

    Lightning takes any checkpoint of a run with ``max_steps`` as one taken inside an epoch
    ("iteration-based training"): continuing a run that stopped at ``max_steps`` on an epoch's last
    batch, it ran that epoch's end again, with no batch and no validation (an empty history row
    replacing the real one) and one more shuffle of the data, so every later epoch differed from an
    uninterrupted run. A checkpoint inside an epoch still restarts inside it: its epoch is unfinished."""

    def _set_restarting(self, restarting: bool) -> None:
        progress = self.epoch_progress.current  # Lightning's tracker of started and processed epochs
        unfinished = progress.ready != progress.processed or progress.started != progress.processed  # type: ignore[attr-defined]
        _Loop.restarting.fset(self, restarting and unfinished)  # type: ignore[attr-defined]  # private: lightning 2.6

    restarting = property(_Loop.restarting.fget, _set_restarting)  # type: ignore[attr-defined]  # private: lightning 2.6


def _step_flops_of(model: torch.nn.Module | None, datamodule: Any) -> float | None:
    """FLOPs of one training step of ``model`` on a batch of ``datamodule``'s shape, or None where
    the data module does not say what it yields (``spec``)."""
    spec = getattr(datamodule, "spec", None)
    input_shape = getattr(spec, "input_shape", None)
    if model is None or input_shape is None:
        return None
    batch_size = getattr(datamodule, "batch_size", 1)
    batch_size = batch_size if isinstance(batch_size, int) and batch_size > 0 else 1
    # A step's FLOPs grow with the batch: counted on at most _PROBE_BATCH rows and scaled, so that a
    # batch size larger than the data (one batch of all of it) never allocates its nominal size.
    probe = min(batch_size, _PROBE_BATCH)
    parameter = next(model.parameters(), None)
    inputs = torch.zeros(
        probe,
        *input_shape,
        dtype=parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32,
        device=parameter.device if parameter is not None else None,
    )
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        return step_flops(model, inputs) * (batch_size / probe)
    finally:
        for module, training in modes.items():
            module.training = training


def _without_slurm_requeue(plugins: Any) -> Any:
    """``plugins`` with Lightning's SLURM environment told not to requeue, inside a SLURM step.

    Lightning's own SLURM requeue (on by default) saves ``hpc_ckpt_<n>.ckpt`` at SIGUSR1, requeues
    the job, and restores that file silently when the job starts again, past this project's checks
    of what a run continues from. A requeued or resubmitted job continues from its folder's
    ``last.ckpt`` instead (experiments.record). Lightning's refusal of ``srun --ntasks=N`` (it
    needs a number of tasks per node) becomes one line."""
    from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

    given = plugins if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
    if not SLURMEnvironment.detect() or any(isinstance(p, ClusterEnvironment) for p in given):
        return plugins
    try:
        environment = SLURMEnvironment(auto_requeue=False)
    except RuntimeError as err:  # e.g. srun --ntasks=2 without --ntasks-per-node
        tasks = os.environ.get("SLURM_NTASKS", "N")
        raise UserError(
            f"SLURM: {' '.join(str(err).split()).rstrip('.')}; start one process per device with srun --ntasks-per-node={tasks} "
            f"(and trainer.devices={tasks} with a DDP trainer, e.g. trainer=ddp_cpu), or one process with srun --ntasks=1"
        ) from None
    return [*given, environment]


@contextlib.contextmanager
def _quiet_outside_slurm_jobs() -> Iterator[None]:
    with warnings.catch_warnings():
        if "SLURM_JOB_ID" not in os.environ:
            warnings.filterwarnings("ignore", message=_SRUN_HINT)
        yield


def _as_list(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    return [callbacks] if isinstance(callbacks, Callback) else list(callbacks)  # Hydra passes a ListConfig
