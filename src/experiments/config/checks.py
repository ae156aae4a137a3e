"""Checks of a composed config against the signatures of what it builds, before anything runs:
unknown options (with a suggestion), wrong types, models that can't be sized from the data, and
settings that would train nothing or forever."""

from __future__ import annotations

import inspect
import logging
import math
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from typeguard import TypeCheckError, check_type

from experiments.config.paths import CONFIG_DIR
from experiments.errors import UserError, suggest

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
        name = getattr(origin, "__name__", str(origin)).replace("Sequence", "list")
        elements = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if name in ("list", "tuple") and elements:  # list of int: what goes inside it, too
            return f"{name} of {' or '.join(dict.fromkeys(_hint_text(a) for a in elements))}"
        return name
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
        target = _locate(node._target_)
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
            if _misplaced_bool(plain, hints[name]):  # typeguard takes True for an int, as Python does
                raise TypeCheckError("a bool for a number")
        except TypeCheckError:
            if isinstance(plain, str) and _only_values(hints[name]):  # a name from a list (precision)
                choices = _hint_text(hints[name]).replace(" or ", ", ")
                raise UserError(f"{key}.{name}={plain!r} is not one of: {choices}") from None
            raise UserError(f"{key}.{name}={plain!r} has the wrong type: expected {_hint_text(hints[name])}") from None


def _locate(target: str) -> Any:
    """``get_object(target)`` without the three lines Hydra logs at ERROR when it fails: the
    refusal that follows is the one line."""
    logger = logging.getLogger("hydra.utils")
    disabled, logger.disabled = logger.disabled, True
    try:
        return get_object(target)
    finally:
        logger.disabled = disabled


def _only_values(hint: Any) -> bool:
    """Whether ``hint`` lists values (``Literal``s, and null), no open type such as str or int."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal or hint is type(None):
        return True
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return all(_only_values(h) for h in typing.get_args(hint))
    return False


def _takes_bool(hint: Any) -> bool:
    """Whether ``hint`` names a bool in its own right (not only as the int that a bool also is)."""
    if hint is bool or hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return any(isinstance(v, bool) for v in typing.get_args(hint))
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_takes_bool(h) for h in typing.get_args(hint))
    return False


def _misplaced_bool(value: Any, hint: Any) -> bool:
    """Whether ``value`` holds a bool (``batch_size=true``, ``hidden=[true]``) where ``hint`` wants a number."""
    if isinstance(value, bool):
        return not _takes_bool(hint)
    if isinstance(value, (list, tuple)) and value:
        options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        for option in options:
            args = typing.get_args(option)
            if typing.get_origin(option) in (list, tuple, Sequence) and args:
                element = args[0]
                return any(_misplaced_bool(v, element) for v in value)
    return False


def check_config(cfg: DictConfig) -> None:
    """Refuse a config whose options don't exist or have the wrong type, before anything runs."""
    check_options(cfg)
    _check_run_options(cfg)
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                _check_node(f"{group}.{name}", node)
                patience = node.get("patience")  # EarlyStopping's, or a callback of one's own
                if _number(patience) and patience < 0:
                    raise UserError(
                        f"{group}.{name}.patience={patience} must be >= 0: the epochs without improvement to wait"
                    )
    if "seed" not in cfg:
        _check_seed(None)
    _check_training_length(cfg.trainer)
    _check_trainer_ranges(cfg.trainer)
    _check_validation_runs(cfg)
    _check_callbacks_choice(cfg)
    check_added_keys("train")


def check_options(cfg: DictConfig) -> None:
    """Refuse options of what ``cfg`` builds (data, model, optimizer, scheduler, trainer, task,
    window) that don't exist or have the wrong type, and a bad seed: the checks that a stored
    config gets too (:func:`experiments.restore.restore`)."""
    for key in ("data", "model", "optimizer", "scheduler", "trainer", "task"):
        node = cfg.get(key)
        if isinstance(node, DictConfig) and "_target_" in node:
            _check_node(key, node, _SUPPLIED | _TASK_SUPPLIED if key == "task" else _SUPPLIED)
    _check_takes_shapes(cfg.get("model"))
    if isinstance(cfg.get("window"), DictConfig):
        window = cast(DictConfig, OmegaConf.merge({"_target_": "experiments.models.Windowed"}, cfg.window))
        _check_node("window", window, _SUPPLIED | {"model"})
    if "seed" in cfg:
        _check_seed(cfg.seed)


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"seed={seed!r} has the wrong type: expected int")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise UserError(f"seed={seed} is out of range: a seed is an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}")


def _check_callbacks_choice(cfg: DictConfig) -> None:
    """Refuse ``callbacks=early_stopping`` (one shipped callback file chosen alone), which would run
    without the default callbacks (checkpoints, history, resume state) and say nothing."""
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


# Trainer options that Lightning takes without a word (or fails on deep inside a fit) when out of
# range: (option, whether null is allowed, the rule, what the value means / how to fix it).
_POSITIVE_INTS = (
    ("accumulate_grad_batches", False, "1 steps after every batch"),
    ("check_val_every_n_epoch", True, "1 validates after every epoch"),
    ("log_every_n_steps", True, "Lightning's default is 50"),
)


def _check_trainer_ranges(trainer: DictConfig) -> None:
    """Refuse trainer options whose value has no meaning (``check_val_every_n_epoch=0``, a
    negative ``gradient_clip_val``) in one line, before Lightning divides by them or ignores them."""
    for name, nullable, hint in _POSITIVE_INTS:
        value = trainer.get(name)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            null = " (or null)" if nullable else ""
            raise UserError(f"trainer.{name}={value!r} must be a positive integer{null}: {hint}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not (_number(clip) and 0 <= clip < math.inf):
        raise UserError(
            f"trainer.gradient_clip_val={clip!r} must be a finite number >= 0 (0 or null: no clipping); pass e.g. "
            "trainer.gradient_clip_val=1.0"
        )
    interval = trainer.get("val_check_interval")
    if interval is not None and _number(interval) and not interval > 0:
        raise UserError(
            f"trainer.val_check_interval={interval!r} must be positive: a fraction of an epoch (0.5) or a "
            "number of batches (100); to validate less often use trainer.check_val_every_n_epoch"
        )
    sanity = trainer.get("num_sanity_val_steps")
    if _number(sanity) and sanity < -1:
        raise UserError(f"trainer.num_sanity_val_steps={sanity} must be >= 0, or -1 for every validation batch")
    _check_max_time(trainer.get("max_time"))
    for name in ("min_epochs", "min_steps"):
        value = trainer.get(name)
        if _number(value) and value < 0:
            raise UserError(f"trainer.{name}={value} must be >= 0 (or null: no minimum)")


def _check_run_options(cfg: DictConfig) -> None:
    """The run's own options that callbacks read through interpolations: named as the user wrote
    them, not as the callback that would refuse them later calls them."""
    every = cfg.get("checkpoint_every_n_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise UserError(
            f"checkpoint_every_n_steps={every!r} must be an integer >= 0: write last.ckpt every that many "
            "training steps (0: only at the end of each epoch)"
        )
    mode = cfg.get("monitor_mode", "min")
    if mode not in ("min", "max"):
        raise UserError(
            f"monitor_mode={mode!r} must be min or max: whether a lower or a higher monitor value is better"
        )


# Lightning's Timer takes "DD:HH:MM:SS" or a mapping of datetime.timedelta's arguments.
_TIMEDELTA_KEYS = {"days", "seconds", "microseconds", "milliseconds", "minutes", "hours", "weeks"}


def _check_max_time(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value.strip()):
        return
    if isinstance(value, DictConfig) and value and set(map(str, value.keys())) <= _TIMEDELTA_KEYS:
        if all(_number(v) and v >= 0 for v in value.values()):
            return
    raise UserError(
        f"trainer.max_time={OmegaConf.to_container(value) if isinstance(value, DictConfig) else value!r} is not a "
        "duration: pass DD:HH:MM:SS (+trainer.max_time=00:12:00:00 for 12 hours) or "
        "{hours: 12} (keys: days, hours, minutes, seconds)"
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_validation_runs(cfg: DictConfig) -> None:
    """A ``val/`` monitor (the best checkpoint, early stopping, a sweep's objective) needs a
    validation: refuse settings under which none ever runs, rather than finish with best=None."""
    monitor, trainer = str(cfg.get("monitor")), cfg.trainer
    if not monitor.startswith("val/"):
        return
    limit = trainer.get("limit_val_batches")
    if limit is not None and not isinstance(limit, bool) and isinstance(limit, (int, float)) and limit == 0:
        why = f"trainer.limit_val_batches={limit} runs no validation"
    else:
        every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
        if not (isinstance(every, int) and isinstance(epochs, int) and 0 < epochs < every):
            return
        why = f"trainer.check_val_every_n_epoch={every} validates after none of the trainer.max_epochs={epochs} epochs"
    raise UserError(
        f"monitor={monitor} is never logged: {why}; let validation run, or monitor a training value (monitor=train/loss)"
    )


def check_monitor(monitor: str, metric_names: Sequence[str]) -> None:
    """Refuse a ``train/`` or ``val/`` monitor that the task does not log (``val/accuracy`` for
    ``val/acc``) before training, rather than after the first epoch; ``metric_names`` are the
    names the task logs beside ``loss``."""
    split, _, name = monitor.partition("/")
    logged = [f"{s}/{n}" for s in ("val", "train") for n in ("loss", *metric_names)]
    if split == "test":
        raise UserError(
            f"monitor={monitor} is logged only after training, by the test; monitor a validation value "
            f"(one of: {', '.join(logged)})"
        )
    if split in ("train", "val") and name and monitor not in logged:
        raise UserError(
            f"monitor={monitor} is not logged by this task{suggest(monitor, logged)}; choose one of: {', '.join(logged)}"
        )


def check_added_keys(config_name: str) -> None:
    """Refuse ``+key=value`` for a top-level key that nothing reads (``+foo=bar``), which Hydra would
    otherwise add in silence. A new option inside a node (``+model.x=...``) is checked against its
    target by :func:`check_config`."""
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
