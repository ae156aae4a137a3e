"""Everything between a composed Hydra config and live objects: resolvers, checks and builders."""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from typeguard import TypeCheckError, check_type

from experiments.checkpoints import run_directory
from experiments.data.base import InMemoryDataModule
from experiments.errors import UserError, suggest
from experiments.tasks import Task, task_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(PROJECT_ROOT / "conf")

# Run directories end in the process id: two runs started in the same second on one machine
# are different processes, so they never share a directory. Cached, so that the jobs of a sweep
# (which Hydra recomposes from the sweep's config and its resolver cache) in worker processes
# still resolve the sweep directory of the process that started the sweep.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)
OmegaConf.register_new_resolver(
    "project_root",
    lambda: str(PROJECT_ROOT if (PROJECT_ROOT / "conf").is_dir() else Path.cwd()),
    replace=True,
)
# hydra.run.dir: a fresh directory, or the run that resume=latest|<run dir> continues.
OmegaConf.register_new_resolver("run_dir", run_directory, replace=True)

# Keys filled in by the entry point from the data module, never by the user.
_SUPPLIED = {"input_shape", "output_shape", "params", "optimizer", "self", "callbacks", "logger"}


def _hint_text(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return " or ".join(dict.fromkeys(_hint_text(h) for h in typing.get_args(hint)))
    if origin is typing.Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin)).replace("Sequence", "list")
    return getattr(hint, "__name__", str(hint))


def _options(target: Any) -> tuple[list[str], dict[str, Any], bool]:
    """The keyword options of ``target``, their type hints, and whether it takes any other keyword.

    A class whose ``__init__`` passes ``**kwargs`` on to its base (experiments.engine.Trainer to
    Lightning's) also has the base's options, checked the same way.
    """
    parameters: list[str] = []
    hints: dict[str, Any] = {}
    for init in [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]:
        signature = inspect.signature(init)
        parameters += [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        try:
            hints = {**typing.get_type_hints(init), **hints}
        except Exception:  # noqa: BLE001 - unresolved forward references: check names, not types
            pass
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return list(dict.fromkeys(parameters)), hints, False
    return list(dict.fromkeys(parameters)), hints, True


def _check_node(key: str, node: DictConfig) -> None:
    """Check the keys and value types of one ``_target_`` node against its target's signature."""
    try:
        target = get_object(node._target_)
    except Exception as err:  # hydra wraps the import error; one line is enough here
        raise UserError(f"{key}._target_: cannot import {node._target_!r}") from err
    parameters, hints, takes_any = _options(target)
    for name, value in node.items():
        if str(name).startswith("_"):
            continue
        if name not in parameters:
            if takes_any:
                continue
            valid = [p for p in parameters if p not in _SUPPLIED]
            raise UserError(
                f"{key}.{name} is not an option of {node._target_}{suggest(str(name), valid)}; "
                f"valid options: {', '.join(valid)}"
            )
        if name not in hints:
            continue
        plain = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        if isinstance(plain, list) and typing.get_origin(hints[name]) is tuple:
            plain = tuple(plain)
        try:
            check_type(plain, hints[name])
        except TypeCheckError:
            raise UserError(
                f"{key}.{name}={plain!r} has the wrong type: expected {_hint_text(hints[name])}"
            ) from None


def check_config(cfg: DictConfig) -> None:
    """Refuse a config whose options don't exist or have the wrong type, before anything runs."""
    for key in ("data", "model", "optimizer", "scheduler", "trainer"):
        node = cfg.get(key)
        if isinstance(node, DictConfig) and "_target_" in node:
            _check_node(key, node)
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                _check_node(f"{group}.{name}", node)
    if not isinstance(cfg.get("seed"), int):
        raise UserError(f"seed={cfg.get('seed')!r} has the wrong type: expected int")


def _optional(node: Any) -> Callable[..., Any] | None:
    """Instantiate a ``_partial_`` node, or None for an empty group option such as ``scheduler=none``."""
    if not node or "_target_" not in node:
        return None
    return instantiate(node)


_TRUE_PRECISION_DTYPES = {
    "64": torch.float64,
    "64-true": torch.float64,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
}


def build(cfg: DictConfig) -> tuple[InMemoryDataModule, Task]:
    """The data module, and the task around a model sized from what the data module declares."""
    datamodule = instantiate(cfg.data)
    spec = datamodule.spec
    try:
        model = instantiate(cfg.model, input_shape=spec.input_shape, output_shape=spec.output_shape)
    except InstantiationException as err:
        if not isinstance(err.__cause__, ValueError):
            raise
        raise UserError(
            f"model {cfg.model._target_.rsplit('.', 1)[-1]} does not fit data "
            f"{cfg.data._target_.rsplit('.', 1)[-1]} (input shape {list(spec.input_shape)}): "
            f"{err.__cause__}; choose a model that takes such inputs (model=mlp takes any)"
        ) from None
    options = OmegaConf.to_container(cfg.task, resolve=True) if cfg.get("task") else {}
    task = task_for(
        spec,
        model,
        optimizer=_optional(cfg.optimizer),
        scheduler=_optional(cfg.get("scheduler")),
        monitor=cfg.monitor,
        **options,  # type: ignore[arg-type]
    )
    # Lightning loads a checkpoint before it converts the module to a "-true" precision, which
    # would round float64 weights through float32 on resume; convert first.
    dtype = _TRUE_PRECISION_DTYPES.get(str(cfg.trainer.get("precision")))
    if dtype is not None:
        task.to(dtype)
    # Build the optimizer once now, so that a bad setting (lr < 0, say) fails before training.
    try:
        optimizer = task.optimizer_factory(task.parameters())
    except (ValueError, TypeError) as err:
        raise UserError(f"optimizer: {err}; fix the optimizer.* options") from None
    if task.scheduler_factory is not None:
        try:
            task.scheduler_factory(optimizer)
        except (ValueError, TypeError) as err:
            raise UserError(f"scheduler: {err}; fix the scheduler.* options") from None
    return datamodule, task


def resolve_threads(cfg: DictConfig, task: Task, datamodule: Any) -> None:
    """Replace ``trainer.num_threads=auto`` by the number of threads this run will use, chosen
    from the work of one training step and the processes that share the machine's cores."""
    from experiments.engine import AUTO, choose_threads, step_flops

    if cfg.trainer.get("num_threads", AUTO) != AUTO:
        return
    parameter = next(task.parameters(), None)
    inputs = torch.zeros(
        getattr(datamodule, "batch_size", 1), *datamodule.spec.input_shape,
        dtype=parameter.dtype if parameter is not None else torch.float32,
    )
    cfg.trainer.num_threads = choose_threads(step_flops(task, inputs), _processes_sharing_cores(cfg))


def _processes_sharing_cores(cfg: DictConfig) -> int:
    """Processes of this job on this machine: DDP ranks on the CPU times parallel sweep workers."""
    from hydra.core.hydra_config import HydraConfig

    ranks = 1
    if cfg.trainer.get("accelerator") == "cpu" and "ddp" in str(cfg.trainer.get("strategy")):
        devices = cfg.trainer.get("devices")
        ranks = devices if isinstance(devices, int) and devices > 0 else os.cpu_count() or 1
    workers = 1
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        for node in (hydra_cfg.get("sweeper"), hydra_cfg.get("launcher")):
            jobs = (node or {}).get("n_jobs")
            if isinstance(jobs, int) and jobs > 1 and hydra_cfg.mode.name == "MULTIRUN":
                workers = max(workers, jobs)
    return ranks * workers


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` (:class:`experiments.engine.Trainer`); ``overrides`` win over the config."""
    return instantiate(cfg.trainer, **overrides)


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """The callbacks of ``cfg.callbacks``, less the step checkpoint when ``checkpoint_every_n_steps`` is 0."""
    nodes = dict(cfg.get("callbacks") or {})
    if cfg.get("checkpoint_every_n_steps", 0) == 0:
        nodes.pop("step_checkpoint", None)  # it would never save
    return instantiate_group(nodes)


def instantiate_group(node: DictConfig | dict[str, Any] | None) -> list[Any]:
    """Objects of a dict-valued group such as ``callbacks`` or ``logger``, skipping empty entries."""
    return [instantiate(v) for v in (node or {}).values() if v and "_target_" in v]
