"""Live objects from a checked config: the data module, the model sized from it, the task around
it, the trainer with its callbacks and loggers."""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Callable
from typing import Any, cast

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import ProgressBar as AnyProgressBar
from omegaconf import DictConfig, OmegaConf

from experiments.callbacks import OptunaPruning, ProgressBar
from experiments.data.contract import check_datamodule
from experiments.data.spec import DataSpec
from experiments.engine import Trainer as EngineTrainer
from experiments.errors import UserError
from experiments.models.common import ShapeError
from experiments.models.window import Windowed
from experiments.sweeps import SWEEPER_TARGET, open_storage, optuna_trial, storage_error, storage_problem, storage_url
from experiments.tasks import Task, task_for


def _task(spec: DataSpec, model: torch.nn.Module, options: dict[str, Any], **common: Any) -> Task:
    """The task module: the one that matches the data, or a user's own (``task._target_``).

    A user's task class gets the model, the optimizer and scheduler factories and the monitor, and
    whichever of ``spec``, ``num_classes``, ``input_shape`` and ``output_shape`` its constructor names.
    """
    target = options.pop("_target_", None)
    given = sorted(set(options) & {*common, "model", "spec"})
    if given:  # else a TypeError of Python's call: "got multiple values for keyword argument"
        raise UserError(
            f"task.{given[0]} is not an option of the task: the run gives it the {given[0]} itself "
            f"(the {given[0]} of its config); drop task.{given[0]}"
        )
    if target is None:
        return task_for(spec, model, **common, **options)
    cls = get_object(target)
    if not (inspect.isclass(cls) and issubclass(cls, Task)):
        raise UserError(f"task._target_: {target} is not a subclass of experiments.tasks.Task")
    parameters = inspect.signature(cls.__init__).parameters
    offered: dict[str, Any] = {
        "spec": spec,
        "num_classes": spec.num_classes,
        "input_shape": spec.input_shape,
        "output_shape": spec.output_shape,
    }
    extra = {k: v for k, v in offered.items() if k in parameters and k not in options}
    try:
        return cls(model, **common, **extra, **options)
    except (TypeError, ValueError) as err:
        raise UserError(f"task {target}: {err}") from None


def _optional(node: Any) -> Callable[..., Any] | None:
    """Instantiate a ``_partial_`` node, or None for an empty group option such as ``scheduler=none``."""
    if not node or "_target_" not in node:
        return None
    return instantiate(node)


def _bad_model_option(node: DictConfig, err: ValueError) -> str:
    """One line that blames the model option a model's ValueError talks about, not the data."""
    message = str(err)
    for key, value in node.items():
        name = str(key)
        if not name.startswith("_") and re.search(rf"\b{re.escape(name)}\b", message.split(";")[0]):
            return f"model.{name}={value!r} is not valid for {node._target_.rsplit('.', 1)[-1]}: {message}; fix model.{name}"
    return f"model {node._target_.rsplit('.', 1)[-1]}: {message}; fix the model.* options"


# Words of torch's optimizers' refusals ("Invalid learning rate: -1") and the option they mean.
_OPTIMIZER_WORDS = (
    ("learning rate", "lr"),
    ("weight_decay", "weight_decay"),
    ("beta", "betas"),
    ("epsilon", "eps"),
    ("momentum", "momentum"),
)


def _bad_optimizer_option(node: DictConfig, err: Exception) -> str:
    """One line naming the optimizer option that torch refused (``optimizer.lr=nan``), not only its words."""
    message = str(err)
    for words, key in _OPTIMIZER_WORDS:
        if words in message.lower() and key in node:
            return f"optimizer.{key}={node[key]!r} is not valid: {message}; fix optimizer.{key}"
    return f"optimizer: {message}; fix the optimizer.* options"


def _window_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``window`` options when any is on (the model is then wrapped in Windowed), else {}."""
    node = cfg.get("window")
    options = {"revin": False, "channel_independent": False, "patch_len": 1}
    if isinstance(node, DictConfig):
        options.update(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    active = options["revin"] or options["channel_independent"] or options["patch_len"] != 1
    return options if active else {}


_TRUE_PRECISION_DTYPES = {
    "64": torch.float64,
    "64-true": torch.float64,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
}


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, Task]:
    """The data module (checked against the contract of experiments.data.contract), and the task
    around a model sized from what the data module declares; the task's checkpoints carry ``cfg``."""
    datamodule = instantiate(cfg.data)
    spec = check_datamodule(datamodule, str(cfg.data._target_))
    window = _window_options(cfg)
    try:
        core_input, core_output = (
            Windowed.core_shapes(
                spec.input_shape, spec.output_shape, window["channel_independent"], window["patch_len"]
            )
            if window
            else (spec.input_shape, spec.output_shape)
        )
    except ShapeError as err:
        raise UserError(
            f"window: {err}; data {cfg.data._target_.rsplit('.', 1)[-1]} yields no forecasting windows: "
            "leave window.revin, window.channel_independent and window.patch_len at false, false and 1"
        ) from None
    except ValueError as err:
        raise UserError(f"window.patch_len={window['patch_len']!r} is not valid: {err}; fix window.patch_len") from None
    try:
        model = instantiate(cfg.model, input_shape=core_input, output_shape=core_output)
    except InstantiationException as err:
        if not isinstance(err.__cause__, ValueError):
            raise
        if not isinstance(err.__cause__, ShapeError):
            raise UserError(_bad_model_option(cfg.model, err.__cause__)) from None
        raise UserError(
            f"model {cfg.model._target_.rsplit('.', 1)[-1]} does not fit data "
            f"{cfg.data._target_.rsplit('.', 1)[-1]} (input shape {list(spec.input_shape)}): "
            f"{err.__cause__}; choose a model that takes such inputs (model=mlp takes any)"
        ) from None
    if window:
        model = Windowed(model, spec.input_shape, spec.output_shape, **window)
    options = OmegaConf.to_container(cfg.task, resolve=True) if cfg.get("task") else {}
    task = _task(
        spec,
        model,
        options,  # type: ignore[arg-type]
        optimizer=_optional(cfg.optimizer),
        scheduler=_optional(cfg.get("scheduler")),
        monitor=cfg.monitor,
    )
    task.run_config = cfg  # every checkpoint carries it (Task.on_save_checkpoint)
    # Lightning loads a checkpoint before it converts the module to a "-true" precision, which
    # would round float64 weights through float32 on resume; convert first.
    dtype = _TRUE_PRECISION_DTYPES.get(str(cfg.trainer.get("precision")))
    if dtype is not None:
        task.to(dtype)
    # Build the optimizer once now, so that a bad setting (lr < 0, say) fails before training.
    for key, value in (cfg.optimizer or {}).items():
        if isinstance(value, float) and not math.isfinite(value):  # torch takes lr=inf and trains NaNs
            raise UserError(f"optimizer.{key}={value} is not a finite number; fix optimizer.{key}")
    try:
        optimizer = task.optimizer_factory(task.parameters())
    except (ValueError, TypeError) as err:
        raise UserError(_bad_optimizer_option(cfg.optimizer, err)) from None
    if task.scheduler_factory is not None:
        try:
            task.scheduler_factory(optimizer)
        except (ValueError, TypeError) as err:
            raise UserError(f"scheduler: {err}; fix the scheduler.* options") from None
    return datamodule, task


def processes_sharing_cores(cfg: DictConfig) -> int:
    """Processes of this job on this machine: DDP ranks on the CPU times parallel sweep workers."""
    ranks = 1
    if cfg.trainer.get("accelerator") == "cpu" and "ddp" in str(cfg.trainer.get("strategy")):
        devices = cfg.trainer.get("devices")
        ranks = devices if isinstance(devices, int) and devices > 0 else os.cpu_count() or 1
    workers = 1
    if HydraConfig.initialized():
        hydra_cfg = cast(DictConfig, HydraConfig.get())  # the HydraConf schema, as a DictConfig at run time
        for node in (hydra_cfg.get("sweeper"), hydra_cfg.get("launcher")):
            jobs = (node or {}).get("n_jobs")
            if isinstance(jobs, int) and jobs > 1 and hydra_cfg.mode.name == "MULTIRUN":
                workers = max(workers, jobs)
    return ranks * workers


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` (:class:`experiments.engine.Trainer`); ``overrides`` win over the
    config. The engine's Trainer is told how many processes of this job share the machine's cores."""
    if "processes" not in overrides and "processes" in inspect.signature(get_object(cfg.trainer._target_)).parameters:
        overrides["processes"] = processes_sharing_cores(cfg)
    return instantiate(cfg.trainer, **overrides)


def settle_auto_settings(cfg: DictConfig, trainer: L.Trainer, task: Task, datamodule: Any) -> None:
    """Replace ``trainer.steps_per_execution=auto`` and ``trainer.num_threads=auto`` in ``cfg`` by the
    numbers that the trainer settled on (:meth:`experiments.engine.Trainer.settle`), so that the run's
    ``config.yaml`` and checkpoints show them."""
    if not isinstance(trainer, EngineTrainer):
        return
    steps, threads = trainer.settle(task, datamodule)
    for key, value in (("steps_per_execution", steps), ("num_threads", threads)):
        if key in cfg.trainer:
            cfg.trainer[key] = value


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """The callbacks of ``cfg.callbacks``, less the step checkpoint when ``checkpoint_every_n_steps`` is 0;
    with our terminal-only progress bar exactly when ``trainer.enable_progress_bar`` is true."""
    nodes = dict(cfg.get("callbacks") or {})
    if cfg.get("checkpoint_every_n_steps", 0) == 0:
        nodes.pop("step_checkpoint", None)  # it would never save
    callbacks = instantiate_group(nodes)
    wanted = bool((cfg.get("trainer") or {}).get("enable_progress_bar", False))
    bars = [c for c in callbacks if isinstance(c, AnyProgressBar)]
    if not wanted:  # Lightning refuses a progress bar callback with enable_progress_bar=false
        callbacks = [c for c in callbacks if c not in bars]
    elif not bars:  # else Lightning would add its own, which also draws into files and pipes
        callbacks.insert(0, ProgressBar())
    return callbacks


def instantiate_group(node: DictConfig | dict[str, Any] | None) -> list[Any]:
    """Objects of a dict-valued group such as ``callbacks`` or ``logger``, skipping empty entries."""
    return [instantiate(v) for v in (node or {}).values() if v and "_target_" in v]


def pruning_callbacks(monitor: str) -> list[Any]:
    """``[OptunaPruning]`` for a trial of our Optuna sweeper with a pruner, else ``[]``."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = cast(DictConfig, HydraConfig.get())  # the HydraConf schema, as a DictConfig at run time
    sweeper: Any = hydra_cfg.get("sweeper") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != SWEEPER_TARGET:
        return []
    if not (sweeper.get("pruner") or {}).get("_target_") or sweeper.pruner._target_.endswith("NopPruner"):
        return []
    import optuna  # only for a trial of an Optuna sweep (0.4 s to import)

    url = storage_url(sweeper.get("storage"), hydra_cfg.sweep.dir)
    try:
        # The pruner is not stored with the study: each trial builds the sweep's own.
        study = optuna.load_study(
            study_name=sweeper.study_name, storage=open_storage(url), pruner=instantiate(sweeper.pruner)
        )
        trial = optuna_trial(study, int(hydra_cfg.job.num))
    except Exception as err:
        if storage_error(err) is None:
            raise
        raise UserError(
            f"the study's database failed: {storage_problem(err)}; run the sweep's command again once it is "
            "back (the study continues)"
        ) from None
    return [] if trial is None else [OptunaPruning(trial, monitor)]
