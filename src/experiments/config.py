"""Everything between a composed Hydra config and live objects: resolvers, checks and builders."""

from __future__ import annotations

import inspect
import os
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from typeguard import TypeCheckError, check_type

from experiments.checkpoints import run_directory
from experiments.data.contract import check_datamodule
from experiments.data.spec import DataSpec
from experiments.errors import UserError, suggest
from experiments.models.common import ShapeError
from experiments.models.window import Windowed
from experiments.tasks import Task, task_for

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parents[1]
# A clone (or an editable install of one) reads the top-level conf/ itself; an installed wheel reads
# the copy that the build put into the package (setup.py), so conf/ has one source in git.
IN_CLONE = (PROJECT_ROOT / "conf" / "train.yaml").is_file()
CONFIG_DIR = str(PROJECT_ROOT / "conf" if IN_CLONE else PACKAGE_DIR / "conf")


def data_root() -> Path:
    """Where data sets live: ``$EXPERIMENTS_DATA``, else a clone's ``data/`` (MNIST shipped there),
    else the user cache of an installed package (``$XDG_CACHE_HOME/experiments``, by default
    ``~/.cache/experiments``), into which missing data sets are downloaded."""
    if os.environ.get("EXPERIMENTS_DATA"):
        return Path(os.environ["EXPERIMENTS_DATA"]).expanduser()
    if IN_CLONE:
        return PROJECT_ROOT / "data"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "experiments"


# Run directories end in the process id: two runs started in the same second on one machine
# are different processes, so they never share a directory. Cached, so that the jobs of a sweep
# (which Hydra recomposes from the sweep's config and its resolver cache) in worker processes
# still resolve the sweep directory of the process that started the sweep.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT if IN_CLONE else Path.cwd()), replace=True)
# paths.data_dir, and whether missing data sets may be fetched (not in a clone: it ships its data).
OmegaConf.register_new_resolver("data_root", lambda: str(data_root()), replace=True)
OmegaConf.register_new_resolver("fetch_missing_data", lambda: not IN_CLONE, replace=True)
# hydra.run.dir: a fresh directory, or the run that resume=latest|<run dir> continues.
OmegaConf.register_new_resolver("run_dir", run_directory, replace=True)


def folder_name(name: Any) -> str:
    """A ``name`` (or study name) that is one folder inside ``outputs/`` (resolver ``${folder_name:...}``)."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise UserError(
            f"name={text!r} must be one folder name: no '/', '\\' or '..' (runs go to outputs/<name>/); "
            "pass name=my_experiment"
        )
    return text


OmegaConf.register_new_resolver("folder_name", folder_name, replace=True)

# Torch, NumPy and Python seeds all take this range.
SEED_RANGE = (0, 2**32 - 1)

# Keys filled in by the entry point from the data module, never by the user.
_SUPPLIED = {"input_shape", "output_shape", "params", "optimizer", "self", "callbacks", "logger"}
# ... and those it gives a task module of the user's own (see _task).
_TASK_SUPPLIED = {"model", "scheduler", "monitor", "spec", "num_classes"}


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
    for init in (
        [vars(c)["__init__"] for c in inspect.getmro(target) if "__init__" in vars(c)]
        if inspect.isclass(target)
        else [target]
    ):
        signature = inspect.signature(init)
        parameters += [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        try:
            hints = {**typing.get_type_hints(init), **hints}
        except Exception:  # noqa: BLE001 - unresolved forward references: check names, not types
            pass
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return list(dict.fromkeys(parameters)), hints, False
    return list(dict.fromkeys(parameters)), hints, True


def _check_node(key: str, node: DictConfig, supplied: frozenset[str] | set[str] = _SUPPLIED) -> None:
    """Check the keys and value types of one ``_target_`` node against its target's signature."""
    try:
        target = get_object(node._target_)
    except Exception as err:  # hydra wraps the import error; one line is enough here
        raise UserError(
            f"{key}._target_: cannot import {node._target_!r}; "
            "check the name, and that its package is installed or on PYTHONPATH"
        ) from err
    parameters, hints, takes_any = _options(target)
    for name, value in node.items():
        if str(name).startswith("_"):
            continue
        if name not in parameters:
            if takes_any:
                continue
            valid = [p for p in parameters if p not in supplied and p != "self"]
            raise UserError(
                f"{key}.{str(name)} is not an option of {node._target_}{suggest(str(name), valid)}; "
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
            raise UserError(f"{key}.{name}={plain!r} has the wrong type: expected {_hint_text(hints[name])}") from None


def check_config(cfg: DictConfig) -> None:
    """Refuse a config whose options don't exist or have the wrong type, before anything runs."""
    for key in ("data", "model", "optimizer", "scheduler", "trainer", "task"):
        node = cfg.get(key)
        if isinstance(node, DictConfig) and "_target_" in node:
            _check_node(key, node, _SUPPLIED | _TASK_SUPPLIED if key == "task" else _SUPPLIED)
    _check_takes_shapes(cfg.get("model"))
    if isinstance(cfg.get("window"), DictConfig):
        window = cast(DictConfig, OmegaConf.merge({"_target_": "experiments.models.Windowed"}, cfg.window))
        _check_node("window", window, _SUPPLIED | {"model"})
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                _check_node(f"{group}.{name}", node)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"seed={seed!r} has the wrong type: expected int")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise UserError(f"seed={seed} is out of range: a seed is an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}")
    _check_training_length(cfg.trainer)
    _check_callbacks_choice(cfg)
    check_added_keys("train")


def _check_callbacks_choice(cfg: DictConfig) -> None:
    """Refuse ``callbacks=early_stopping`` (one shipped callback file chosen alone), which would run
    without the default callbacks (checkpoints, history, resume state) and say nothing."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    choice = HydraConfig.get().runtime.choices.get("callbacks")
    shipped = Path(CONFIG_DIR) / "callbacks" / f"{choice}.yaml"
    callbacks = cfg.get("callbacks") or {}
    if isinstance(choice, str) and choice != "default" and shipped.is_file() and "model_checkpoint" not in callbacks:
        raise UserError(
            f"callbacks={choice} would replace the default callbacks (checkpoints, history.csv, resume state) "
            f"by {choice} alone; add it to them: callbacks=[default,{choice}] (callbacks=[{choice}] to run "
            "without them)"
        )


def _check_training_length(trainer: DictConfig) -> None:
    """A run trains for a positive number of epochs or steps: 0 would report an untrained model as
    completed, and -1 (Lightning's "no limit") would train forever without a word."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if epochs is not None and epochs < -1:
        return  # Lightning's own line names the value (and says what it takes)
    steps_given = isinstance(steps, int) and steps > 0
    if epochs == 0:
        raise UserError(
            "trainer.max_epochs=0 trains nothing; pass a positive trainer.max_epochs (or +trainer.max_steps=N)"
        )
    if epochs in (None, -1) and not steps_given:
        raise UserError(
            f"trainer.max_epochs={epochs} with no positive trainer.max_steps would train "
            f"{'forever' if epochs == -1 else 'for 1000 epochs (Lightning default)'}; pass a positive "
            "trainer.max_epochs, or +trainer.max_steps=N"
        )
    if steps == 0:
        raise UserError(
            "trainer.max_steps=0 trains nothing; pass a positive trainer.max_steps, or -1 for no step limit"
        )


def check_added_keys(config_name: str) -> None:
    """Refuse ``+key=value`` for a top-level key that nothing reads (``+foo=bar``), which Hydra would
    otherwise add in silence. A new option inside a node (``+model.x=...``) is checked against its
    target by :func:`check_config`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return
    primary = OmegaConf.load(Path(CONFIG_DIR) / f"{config_name}.yaml")
    assert isinstance(primary, DictConfig)  # conf/<config_name>.yaml of this package: a mapping
    known = {str(k) for k in primary if k != "defaults"} | {"hydra"}
    for entry in primary.get("defaults") or []:
        if isinstance(entry, DictConfig):
            known |= {str(k).split()[-1].split("/")[0].split("@")[0] for k in entry}
    for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        if not (override.is_add() or override.is_force_add()):
            continue
        top = override.key_or_group.split(".")[0].split("/")[0]
        if top not in known:
            raise UserError(
                f"unknown key {top!r}{suggest(top, known)}: +{str(override.input_line).lstrip('+')} adds a key "
                f"that nothing reads; check the spelling (top-level keys: {', '.join(sorted(known - {'hydra'}))})"
            )


def _check_takes_shapes(node: Any) -> None:
    """A model (ours or a user's) is sized from the data: it must take input_shape and output_shape."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    target = get_object(node._target_)
    parameters = inspect.signature(target.__init__ if inspect.isclass(target) else target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    missing = [name for name in ("input_shape", "output_shape") if name not in parameters]
    if missing:
        raise UserError(
            f"model {node._target_} does not take {' and '.join(missing)}; a model's constructor gets the "
            "data's per-sample input_shape and output_shape (tuples of ints): add those parameters"
        )


def _task(spec: DataSpec, model: torch.nn.Module, options: dict[str, Any], **common: Any) -> Task:
    """The task module: the one that matches the data, or a user's own (``task._target_``).

    A user's task class gets the model, the optimizer and scheduler factories and the monitor, and
    whichever of ``spec``, ``num_classes``, ``input_shape`` and ``output_shape`` its constructor names.
    """
    target = options.pop("_target_", None)
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


def resolve_auto_settings(cfg: DictConfig, task: Task, datamodule: Any) -> None:
    """Replace ``trainer.num_threads=auto`` and ``trainer.steps_per_execution=auto`` by the numbers
    this run will use, so that its ``config.yaml`` shows them: both follow from the work of one
    training step (counted once, here, before fitting), the threads also from the processes that
    share the machine's cores."""
    from experiments.engine import AUTO, auto_steps, choose_threads, step_flops

    trainer = cfg.trainer
    threads, steps = trainer.get("num_threads", AUTO), trainer.get("steps_per_execution", AUTO)
    if AUTO not in (threads, steps):
        return
    parameter = next(task.parameters(), None)
    inputs = torch.zeros(
        getattr(datamodule, "batch_size", 1),
        *datamodule.spec.input_shape,
        dtype=parameter.dtype if parameter is not None else torch.float32,
    )
    flops = step_flops(task, inputs)
    if threads == AUTO:
        trainer.num_threads = choose_threads(flops, _processes_sharing_cores(cfg))
    accelerator = trainer.get("accelerator", "cpu")
    if steps == AUTO and "steps_per_execution" in trainer and accelerator in ("cpu", "gpu", "cuda", "mps"):
        # (with accelerator=auto, the engine decides once it knows the device)
        trainer.steps_per_execution = auto_steps(flops, accelerator == "cpu")


def _processes_sharing_cores(cfg: DictConfig) -> int:
    """Processes of this job on this machine: DDP ranks on the CPU times parallel sweep workers."""
    from hydra.core.hydra_config import HydraConfig

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
    """The Trainer of ``cfg.trainer`` (:class:`experiments.engine.Trainer`); ``overrides`` win over the config."""
    return instantiate(cfg.trainer, **overrides)


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """The callbacks of ``cfg.callbacks``, less the step checkpoint when ``checkpoint_every_n_steps`` is 0;
    with our terminal-only progress bar exactly when ``trainer.enable_progress_bar`` is true."""
    from lightning.pytorch.callbacks import ProgressBar as AnyProgressBar

    from experiments.callbacks import ProgressBar

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
