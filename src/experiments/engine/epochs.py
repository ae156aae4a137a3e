"""An epoch loop of our own on Lightning's hooks, for in-memory data under fused steps.

Why. On XOR (one batch of four rows per epoch, 300 epochs) every epoch pays Lightning's loop
machinery once: the data fetcher and combined loader, the optimizer closure and the
LightningOptimizer/precision round trip, a profiler context and a walk over every callback per
hook, signature inspection at every step and validation, and the ResultCollection of validation
(torchmetrics' generic ``reset`` of every logged value and eleven recomputations of the epoch's
metrics). That was 2.5-3 ms of a 10 ms epoch, three times the plain loop's whole epoch.
:class:`OwnEpochs` replaces three methods of the trainer's *loop instances* for one fit
(``_TrainingEpochLoop.advance`` and ``on_advance_end``, ``_FitLoop.on_advance_end``) and removes
them after it; everything else (the epoch and fit loops' ``run``, restarts, the sanity check,
``on_train_epoch_start``, the data's setup) stays Lightning's. Measured on XOR: 0.7-0.8 s of a
2.3-3.0 s fit (``scripts/bench_xor.py``, way ``lightning_loop``; docs/speed.md).

What it keeps, exactly as Lightning's loop does it (``tests/test_epochs.py`` checks the files,
checkpoints and logged values of runs against ``trainer.own_epoch_loop=false``, bit for bit):

- every hook, in Lightning's order, on every callback that overrides it (monitoring callbacks,
  ``ModelCheckpoint`` and ``EarlyStopping``, after the others at the epoch's end), with the
  module's ``_current_fx_name`` set as Lightning sets it;
- each optimizer step in the order of automatic optimisation (the chunk's inner steps are
  :meth:`FusedSteps._step`'s; its last one counts ``zero_grad`` as Lightning's closure does);
- every progress counter (batches, optimizer steps, epochs, validation batches,
  ``_batches_that_stepped``), so checkpoints, step checkpoints inside chunks, exact resume and
  early stopping see what they see under Lightning's loop;
- ``self.log`` in validation and at the epoch's end: tensors of the usual kind (epoch means,
  Lightning's own sums in the same floating-point operations, :func:`epoch_logs.add_up`) and
  torchmetrics objects (computed and reset once an epoch, as Lightning does) are summed here
  and handed to ``trainer.callback_metrics``, the progress bar and the loggers as Lightning's
  logger connector hands them; any other call (``on_step`` values, other reductions) goes to
  Lightning's own ``log`` and its results, which Lightning's own epoch-end code then reports.

Where it stands aside (Lightning's methods run, decided at every call): a restart in progress
(the first epoch after a resume), any profiler but the pass-through one, more than one process
or device, a precision other than 32-true and 64-true, fused steps not installed (several
optimizers, manual optimisation, a module that steps its own way), and for validation a loader
that is not in memory or several validation loaders. ``trainer.own_epoch_loop=false`` turns it
off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping
from lightning.pytorch.loops.optimization.automatic import ClosureResult
from lightning.pytorch.plugins.precision import DoublePrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy, Strategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from experiments.engine.epoch_logs import add_up
from experiments.engine.fused import FusedSteps

# Module hooks that do something by default: always called (the others only when overridden).
_MODULE_HOOKS_WITH_DEFAULTS = frozenset({"on_validation_model_zero_grad", "on_validation_model_eval"})
# LightningModule.log's options that an epoch value of the usual kind leaves at these values.
_PLAIN = {"enable_graph": False, "add_dataloader_idx": True, "rank_zero_only": False, "sync_dist_group": None}


class _Hooks:
    """Lightning's hook dispatch (``lightning.pytorch.trainer.call``) for one fit, without its
    profiler context per call, and asking only the callbacks that override a hook."""

    def __init__(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.trainer = trainer
        self.module = module
        self.fx = module.__dict__  # _current_fx_name: a plain attribute, set without nn.Module.__setattr__
        self._callbacks: dict[tuple[str, bool | None], list[Callable[..., Any]]] = {}
        self._module: dict[str, Callable[..., Any] | None] = {}
        self._strategy: dict[str, Callable[..., Any] | None] = {}

    def callbacks(self, name: str, *args: Any, monitoring: bool | None = None) -> None:
        chosen = self._callbacks.get((name, monitoring))
        if chosen is None:
            every = self.trainer.callbacks  # type: ignore[attr-defined]
            if monitoring is not None:
                every = [c for c in every if isinstance(c, (EarlyStopping, Checkpoint)) == monitoring]
            chosen = self._callbacks[(name, monitoring)] = [
                getattr(c, name) for c in every if is_overridden(name, c, Callback)
            ]
        if not chosen:
            return
        fx = self.fx
        previous, fx["_current_fx_name"] = fx["_current_fx_name"], name  # private: lightning 2.6
        for hook in chosen:
            hook(self.trainer, self.module, *args)
        fx["_current_fx_name"] = previous  # private: lightning 2.6

    def module_hook(self, name: str, *args: Any) -> Any:
        if name not in self._module:
            own = name in _MODULE_HOOKS_WITH_DEFAULTS or is_overridden(name, self.module, L.LightningModule)
            self._module[name] = getattr(self.module, name) if own else None
        hook = self._module[name]
        return None if hook is None else self._call(name, hook, args)

    def strategy_hook(self, name: str, *args: Any) -> Any:
        if name not in self._strategy:
            strategy = self.trainer.strategy
            own = name.endswith("_step") or is_overridden(name, strategy, Strategy)
            self._strategy[name] = getattr(strategy, name) if own else None
        hook = self._strategy[name]
        return None if hook is None else self._call(name, hook, args)

    def _call(self, name: str, hook: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        fx = self.fx
        previous, fx["_current_fx_name"] = fx["_current_fx_name"], name  # private: lightning 2.6
        output = hook(*args)
        fx["_current_fx_name"] = previous  # private: lightning 2.6
        return output


class _EpochValues:
    """``self.log`` while the own loop runs validation or the training epoch's end: epoch values
    of the usual kind are summed here (Lightning's arithmetic); anything else goes to ``passed_on``
    (Lightning's own ``log``). With ``publish`` (the logger connector), each value is handed over
    as soon as it is logged: at the epoch's end a monitoring callback reads what the callbacks
    before it logged."""

    def __init__(self, passed_on: Callable[..., Any], device: torch.device, publish: Any = None) -> None:
        self.passed_on = passed_on
        self.device = device
        self.publish = publish
        # name -> [[total, count, values, sizes], options] for tensors, [metric, options] for metrics
        self.tensors: dict[str, list[Any]] = {}
        self.metrics: dict[str, list[Any]] = {}
        self.batch_size = 1  # the current batch's, for a call that names none
        self.logged: dict[str, torch.Tensor] = {}  # published for the loggers (with ``publish``)

    def __call__(  # LightningModule.log's signature
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
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        # One process (see OwnEpochs._active): sync_dist, its group and rank_zero_only change nothing.
        plain = not on_step and on_epoch is not False and reduce_fx in ("mean", torch.mean) and not enable_graph
        if plain and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.tensor(value, device=self.device)  # as LightningModule.log converts a number
        options = {"prog_bar": prog_bar, "logger": True if logger is None else logger}
        if plain and isinstance(value, torchmetrics.Metric):
            self.metrics[name] = [value, options]
        elif plain and isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.detach()
            if value.dtype not in (torch.float32, torch.float64):
                value = value.to(torch.get_default_dtype())
            entry = self.tensors.get(name)
            if entry is None:
                total = torch.tensor(0.0, dtype=torch.get_default_dtype(), device=value.device)
                entry = self.tensors[name] = [[total, 0, [], []], options]
            entry[0][2].append(value.mean())  # Lightning adds value.mean() * batch_size
            entry[0][3].append(batch_size if batch_size is not None else self.batch_size)
        else:
            self.passed_on(
                name,
                value,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                enable_graph=enable_graph,
                sync_dist=sync_dist,
                sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size,
                metric_attribute=metric_attribute,
                rank_zero_only=rank_zero_only,
            )
            return
        if self.publish is not None:
            self.logged.update(_publish(self.publish, {name: self._value(name)}))

    def _value(self, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """The epoch value of ``name`` so far, as Lightning computes it (``total / count``, ``compute()``)."""
        if name in self.metrics:
            metric, options = self.metrics[name]
            return metric.compute().detach(), options
        entry, options = self.tensors[name]
        total, count = add_up(entry)
        entry[0], entry[1], entry[2], entry[3] = total, count, [], []
        return total / torch.tensor(count, device=total.device), options

    def take(self) -> dict[str, tuple[torch.Tensor, dict[str, Any]]]:
        """Every epoch value so far."""
        return {name: self._value(name) for name in [*self.tensors, *self.metrics]}

    def reset(self) -> None:
        for metric, _ in self.metrics.values():
            metric.reset()
        self.tensors, self.metrics = {}, {}


class OwnEpochs:
    """The own epoch loop of one fit (see the module's docstring): :meth:`install` before
    ``fit``, :meth:`uninstall` after it."""

    def __init__(self, trainer: L.Trainer, fused: FusedSteps) -> None:
        self.trainer: Any = trainer  # Lightning's Trainer, whose attributes its stubs do not all declare
        self.fused = fused
        self._usable: bool | None = None  # decided at the first epoch of the fit
        self._validation_usable: bool | None = None
        self.hooks: _Hooks | None = None
        self._train_log: dict[str, torch.Tensor] = {}

    # Installing -------------------------------------------------------------------------------

    def install(self) -> None:
        fit_loop = self.trainer.fit_loop
        epoch_loop = fit_loop.epoch_loop
        # Instance attributes: they shadow the loop classes' methods for this trainer only.
        epoch_loop.advance = self._advance
        epoch_loop.on_advance_end = self._after_batch
        fit_loop.on_advance_end = self._after_epoch

    def uninstall(self) -> None:
        fit_loop = self.trainer.fit_loop
        for loop, name in ((fit_loop.epoch_loop, "advance"), (fit_loop.epoch_loop, "on_advance_end")):
            loop.__dict__.pop(name, None)
        fit_loop.__dict__.pop("on_advance_end", None)

    def _active(self) -> bool:
        trainer, fit_loop = self.trainer, self.trainer.fit_loop
        if fit_loop.restarting or fit_loop.epoch_loop.restarting or fit_loop.epoch_loop.val_loop.restarting:
            return False
        if self._usable is None:
            module = trainer.lightning_module
            self._usable = (
                self.fused.logs is not None
                and self.fused.chunking  # batches come in chunks of an in-memory loader
                and getattr(self.fused, "optimizer", None) is not None
                and module.automatic_optimization
                and trainer.world_size == 1
                and type(trainer.strategy) is SingleDeviceStrategy
                and type(trainer.precision_plugin) in (Precision, DoublePrecision)  # no autocast, no scaler
                and isinstance(trainer.profiler, PassThroughProfiler)
            )
            if self._usable:
                self.hooks = _Hooks(trainer, module)
        return self._usable

    # A training step: one chunk of batches --------------------------------------------------

    def _advance(self, data_fetcher: Any) -> None:
        loop = self.trainer.fit_loop.epoch_loop
        if not self._active():
            return type(loop).advance(loop, data_fetcher)
        trainer, fused, hooks = self.trainer, self.fused, self.hooks
        assert hooks is not None and fused.logs is not None
        lc = trainer._logger_connector  # private: lightning 2.6
        loop.val_loop.restarting = False
        chunk, _, __ = next(data_fetcher)
        batch_idx = loop.batch_idx + 1
        progress = loop.batch_progress
        progress.is_last_batch = data_fetcher.done
        progress.increment_ready()
        if chunk.stops_early:  # cut short by max_steps: a batch inside the epoch, not its end
            fused._not_the_epochs_last()
        lc.on_batch_start(chunk)
        hooks.callbacks("on_train_batch_start", chunk, batch_idx)
        hooks.strategy_hook("on_train_batch_start", chunk, batch_idx)
        progress.increment_started()
        logs = fused.logs
        fx = hooks.fx
        previous, fx["_current_fx_name"] = fx["_current_fx_name"], "training_step"  # private: lightning 2.6
        logs.active = True
        fused._in_chunk = True
        # The training steps inside the precision's context, as Lightning's training_step runs them
        # (under 64-true, float64 is the default dtype there); the last step's backward and
        # optimizer step after it, as Lightning's closure runs them.
        with trainer.precision_plugin.train_step_context():
            try:
                last = chunk.size - 1
                for i in range(last):
                    fused._step(fused._transfer(chunk.next_batch()), chunk.start + i)
                fused.progress.step.increment_ready()
                step_output = fused._call_training_step(fused._transfer(chunk.next_batch()), chunk.start + last)
            finally:
                logs.active = False
                fused._in_chunk = False
                fx["_current_fx_name"] = previous  # private: lightning 2.6
                logs.flush_steps()
        output = self._optimizer_step(ClosureResult.from_training_step_output(step_output, 1))
        progress.increment_processed()
        loop.update_lr_schedulers("step", update_plateau_schedulers=False)
        if loop._num_ready_batches_reached():  # private: lightning 2.6
            loop.update_lr_schedulers("epoch", update_plateau_schedulers=False)
        hooks.callbacks("on_train_batch_end", output, chunk, batch_idx)
        lc.on_batch_end()
        progress.increment_completed()
        lc.update_train_step_metrics()

    def _optimizer_step(self, result: ClosureResult) -> dict[str, Any]:
        """The rest of the chunk's last optimizer step, after its training step, as Lightning's
        automatic optimisation runs it: its closure's order and progress counters (``zero_grad``
        even when the step returned no loss, and the optimizer's step then too)."""
        fused, trainer = self.fused, self.trainer
        module, optimizer, hooks, progress = fused.module, fused.optimizer, fused.hooks, fused.progress
        assert optimizer is not None
        progress.zero_grad.increment_ready()
        for hook in hooks["on_before_zero_grad"]:
            hook(trainer, module, optimizer) if _is_callback_hook(hook) else hook(optimizer)
        progress.zero_grad.increment_started()
        optimizer.zero_grad()
        progress.zero_grad.increment_completed()
        loss = result.closure_loss
        if loss is not None:
            for hook in hooks["on_before_backward"]:
                hook(trainer, module, loss) if _is_callback_hook(hook) else hook(loss)
            loss.backward()
            for hook in hooks["on_after_backward"]:
                hook(trainer, module) if _is_callback_hook(hook) else hook()
        for hook in hooks["on_before_optimizer_step"]:
            hook(trainer, module, optimizer) if _is_callback_hook(hook) else hook(optimizer)
        if fused.clip:
            module.configure_gradient_clipping(
                optimizer,
                gradient_clip_val=trainer.gradient_clip_val,
                gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            )
        optimizer.step()
        progress.step.increment_completed()
        return {} if result.loss is None else result.asdict()

    # After a training step: validation when it is due -------------------------------------------

    def _after_batch(self, data_fetcher: Any) -> None:
        loop = self.trainer.fit_loop.epoch_loop
        if not self._active():
            return type(loop).on_advance_end(loop, data_fetcher)
        trainer = self.trainer
        lc = trainer._logger_connector  # private: lightning 2.6
        should_check_val = loop._should_check_val_fx(data_fetcher)  # private: lightning 2.6
        if loop._skip_next_val:  # private: lightning 2.6
            should_check_val = False
            loop._skip_next_val = False  # private: lightning 2.6
        if should_check_val:
            trainer.validating = True
            first_loop_iter = lc._first_loop_iter  # private: lightning 2.6
            assert self.hooks is not None
            self.hooks.module_hook("on_validation_model_zero_grad")
            if self._can_validate():
                self._validate()
            else:
                loop.val_loop.run()
            trainer.training = True
            lc._first_loop_iter = first_loop_iter  # private: lightning 2.6
        loop.update_lr_schedulers("step", update_plateau_schedulers=True)
        loop._batches_that_stepped += 1  # private: lightning 2.6
        loop._save_loggers_on_train_batch_end()  # private: lightning 2.6
        if not loop._is_training_done and trainer.received_sigterm:  # private: lightning 2.6
            raise SIGTERMException

    def _can_validate(self) -> bool:
        val_loop = self.trainer.fit_loop.epoch_loop.val_loop
        val_loop.setup_data()
        if self._validation_usable is None or val_loop._should_reload_val_dl:  # private: lightning 2.6
            combined = val_loop._combined_loader  # private: lightning 2.6
            loaders = combined.flattened if combined is not None else []
            step = self.trainer.lightning_module.validation_step
            self._validation_usable = (
                len(loaders) == 1
                and hasattr(loaders[0], "start_position")  # an in-memory loader (experiments.data)
                and "dataloader_iter" not in step.__code__.co_varnames[: step.__code__.co_argcount]
            )
        return self._validation_usable

    def _validate(self) -> None:
        """Lightning's validation run (``_EvaluationLoop.run`` while fitting), without its data
        fetcher, its per-call dispatch and its ResultCollection for the values of the usual kind."""
        trainer, hooks = self.trainer, self.hooks
        assert hooks is not None
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        if val_loop.skip:
            return
        module = trainer.lightning_module
        lc = trainer._logger_connector  # private: lightning 2.6
        loader = val_loop._combined_loader.flattened[0]  # private: lightning 2.6
        limit = val_loop.max_batches[0]
        count = len(loader) if limit == float("inf") else min(len(loader), int(limit))
        val_loop._has_run = False  # private: lightning 2.6
        val_loop._logged_outputs = []  # private: lightning 2.6
        progress = val_loop.batch_progress
        progress.reset_on_run()
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):  # as Lightning's _set_sampler_epoch
            set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        assert self.fused.logs is not None
        values = _EpochValues(self.fused.logs.real_log, module.device)
        module.__dict__["log"] = values
        inference = torch.inference_mode if val_loop.inference_mode else torch.no_grad
        try:
            with inference():
                modes = [(m, m.training) for m in module.modules()]
                hooks.module_hook("on_validation_model_eval")
                hooks.callbacks("on_validation_start")
                hooks.module_hook("on_validation_start")
                hooks.strategy_hook("on_validation_start")
                hooks.callbacks("on_validation_epoch_start")
                hooks.module_hook("on_validation_epoch_start")
                precision, strategy = trainer.precision_plugin, trainer.strategy
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= count:
                        break
                    progress.is_last_batch = batch_idx == count - 1
                    batch = precision.convert_input(batch)
                    batch = module._on_before_batch_transfer(batch, dataloader_idx=0)  # private: lightning 2.6
                    batch = strategy.batch_to_device(batch, dataloader_idx=0)
                    progress.increment_ready()
                    lc.on_batch_start(batch)
                    values.batch_size = _batch_size(batch)
                    hooks.callbacks("on_validation_batch_start", batch, batch_idx)
                    hooks.module_hook("on_validation_batch_start", batch, batch_idx)
                    progress.increment_started()
                    output = hooks.strategy_hook("validation_step", batch, batch_idx)
                    progress.increment_processed()
                    hooks.callbacks("on_validation_batch_end", output, batch, batch_idx)
                    hooks.module_hook("on_validation_batch_end", output, batch, batch_idx)
                    lc.on_batch_end()
                    progress.increment_completed()
                    val_loop._has_run = True  # private: lightning 2.6
                    lc.update_eval_step_metrics(val_loop._seen_batches_per_dataloader[0])  # private: lightning 2.6
                    val_loop._seen_batches_per_dataloader[0] += 1  # private: lightning 2.6
                    if not progress.is_last_batch and trainer.received_sigterm:
                        raise SIGTERMException
                lc.epoch_end_reached()
                lc._evaluation_epoch_end()  # private: lightning 2.6
                logged = _publish(lc, values.take())  # Lightning: _store_dataloader_outputs
                logged.update(lc.update_eval_epoch_metrics())
                hooks.callbacks("on_validation_epoch_end")
                hooks.module_hook("on_validation_epoch_end")
                lc.on_epoch_end()
                logged.update(_publish(lc, values.take()))  # with what the epoch-end hooks logged
                logged.update(lc.update_eval_epoch_metrics())  # what went to Lightning's own log
                lc.log_eval_end_metrics(logged)
                hooks.callbacks("on_validation_end")
                hooks.module_hook("on_validation_end")
                hooks.strategy_hook("on_validation_end")
                lc.reset_results()
                values.reset()
                if is_overridden("on_validation_model_train", module, L.LightningModule):
                    hooks.module_hook("on_validation_model_train")
                else:
                    for submodule, training in modes:
                        submodule.training = training
                trainer._last_val_time = time.monotonic()  # private: lightning 2.6
        finally:
            module.__dict__["log"] = self.fused.logs  # the engine's training-step log, as installed

    # The training epoch's end ---------------------------------------------------------------------

    def _after_epoch(self) -> None:
        fit_loop = self.trainer.fit_loop
        if not self._active():
            return type(fit_loop).on_advance_end(fit_loop)
        trainer, hooks, logs = self.trainer, self.hooks, self.fused.logs
        assert hooks is not None and logs is not None
        lc = trainer._logger_connector  # private: lightning 2.6
        lc.epoch_end_reached()
        fit_loop.epoch_progress.increment_processed()
        lightning_log = logs.real_log
        values = _EpochValues(lightning_log, trainer.lightning_module.device, publish=lc)
        # What the epoch-end hooks log (the module's log is the engine's EpochLogs, which hands
        # the epoch's training values over here too).
        logs.real_log = values
        try:
            hooks.callbacks("on_train_epoch_end", monitoring=False)
            hooks.module_hook("on_train_epoch_end")
            hooks.callbacks("on_train_epoch_end", monitoring=True)
        finally:
            logs.real_log = lightning_log
        lc.on_epoch_end()
        epoch_loop = fit_loop.epoch_loop
        if epoch_loop._num_ready_batches_reached():  # private: lightning 2.6
            epoch_loop.update_lr_schedulers("epoch", update_plateau_schedulers=True)
        # Lightning logs the epoch's values at the step before the one that follows.
        epoch_loop._batches_that_stepped -= 1  # private: lightning 2.6
        lc.log_metrics(values.logged)
        lc.update_train_epoch_metrics()  # what went to Lightning's own log
        epoch_loop._batches_that_stepped += 1  # private: lightning 2.6
        values.reset()
        fit_loop.epoch_progress.increment_completed()
        if trainer.received_sigterm:
            raise SIGTERMException


def _publish(lc: Any, values: dict[str, tuple[torch.Tensor, dict[str, Any]]]) -> dict[str, torch.Tensor]:
    """Epoch values into the logger connector as Lightning's ``metrics`` split hands them over:
    every value to the callbacks, the ``prog_bar`` ones as numbers to the progress bar; returns
    those for the loggers."""
    from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

    logged = {}
    for name, (value, options) in values.items():
        lc._callback_metrics[name] = value  # private: lightning 2.6
        if options["logger"]:
            logged[name] = value
        if options["prog_bar"]:
            lc._progress_bar_metrics[name] = convert_tensors_to_scalars(value)  # private: lightning 2.6
    lc._logged_metrics.update(logged)  # private: lightning 2.6
    return logged


def _batch_size(batch: Any) -> int:
    """Lightning's batch size of a batch: the length of its first tensor (1 when it holds none)."""
    from lightning.pytorch.utilities.data import extract_batch_size

    try:
        return extract_batch_size(batch)
    except Exception:  # noqa: BLE001 - Lightning's own default when it finds no tensor
        return 1


def _is_callback_hook(hook: Any) -> bool:
    return isinstance(getattr(hook, "__self__", None), Callback)
