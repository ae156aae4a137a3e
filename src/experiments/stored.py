"""A config that arrives as data: what evaluate, predict and ``load_run`` may build from it.

A checkpoint carries its run's config, and a run folder holds it as ``config.yaml``; anyone may
have written either. Hydra's ``instantiate`` calls whatever a ``_target_`` names with whatever
options, after resolving every ``${...}`` (``${oc.env:...}`` reads the environment,
``${oc.create:...}`` makes new nodes). So such a config is read as data with a schema:

- no interpolation anywhere: a run saves its config resolved, so a ``${`` in one was put there by
  hand (:func:`stored_config`);
- only what a rebuild needs is built: the data module, the model, the optimizer and scheduler,
  the task, and a trainer to test on (:data:`REBUILT`); callbacks, loggers and paths stay data;
- each ``_target_`` there names a class registered for its place (this project's data modules
  where the data goes, its models where the model goes, torch's optimizers and schedulers, the
  Trainer), as exact text, or a class defined in a package that the user trusts
  (``trust=[my_parts]``). The text is compared before anything is imported, and the class it
  locates with the registered one, so an attribute path such as
  ``experiments.errors.logging.FileHandler`` reaches nothing else;
- options are plain values: no positional ``_args_``, no ``_target_`` below a class of ours; this
  project's data modules never download and read files by plain name from a folder inside the
  user's data folder; the trainer keeps only the settings that change how a model computes
  (:data:`TRAINER_OPTIONS`), and evaluate and predict give it their own callbacks and no logger.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from experiments.errors import UserError

# The keys of a run's config that a rebuild reads; the places among them hold a built object.
REBUILT = ("data", "model", "optimizer", "scheduler", "task", "trainer", "window", "monitor", "seed")
PLACES = {
    "data": "data module",
    "model": "model",
    "optimizer": "optimizer",
    "scheduler": "scheduler",
    "task": "task",
    "trainer": "trainer",
}
REQUIRED = ("data", "model", "optimizer", "trainer", "monitor")

# This project's classes that a stored config may build, by place, each as the module and name
# where it is defined (configs name them by a shorter path too, e.g. experiments.data.IDXDataModule).
PROJECT_CLASSES = {
    "data": (
        "experiments.data.idx.IDXDataModule",
        "experiments.data.ett.ETTDataModule",
        "experiments.data.toy.XORDataModule",
        "experiments.data.toy.LineDataModule",
        "experiments.data.timeseries.SineDataModule",
    ),
    "model": (
        "experiments.models.mlp.MLP",
        "experiments.models.cnn.CNN",
        "experiments.models.lstm.LSTM",
        "experiments.models.linear.Linear",
    ),
    "task": (
        "experiments.tasks.classification.ClassificationTask",
        "experiments.tasks.regression.RegressionTask",
        "experiments.tasks.forecasting.ForecastingTask",
    ),
    "trainer": ("experiments.engine.trainer.Trainer", "lightning.pytorch.trainer.trainer.Trainer"),
}


def _subclasses_in(module: Any, base: type) -> tuple[str, ...]:
    """The public classes of ``module`` derived from ``base`` (not ``base`` itself), as defined."""
    return tuple(
        sorted(
            f"{value.__module__}.{value.__qualname__}"
            for name, value in vars(module).items()
            if not name.startswith("_") and inspect.isclass(value) and issubclass(value, base) and value is not base
        )
    )


LIBRARY_CLASSES = {
    "optimizer": _subclasses_in(torch.optim, torch.optim.Optimizer),
    "scheduler": _subclasses_in(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler),
}


def _names(defined: str) -> set[str]:
    """The texts that name the class defined as ``defined`` (``a.b.c.Cls``): that, and the class
    under each package above its module (``a.b.Cls``, ``a.Cls``), where packages re-export it."""
    module, name = defined.rsplit(".", 1)
    parts = module.split(".")
    return {".".join([*parts[:i], name]) for i in range(1, len(parts) + 1)}


# Text -> (place, the class's own module.qualname): the exact names a stored config may build.
REGISTERED = {
    text: (place, defined)
    for registry in (PROJECT_CLASSES, LIBRARY_CLASSES)
    for place, classes in registry.items()
    for defined in classes
    for text in _names(defined)
}

# The trainer settings a rebuild takes from a stored config: how the model computes, and how much
# of the test and predict data a run's own test used. Nothing that writes (default_root_dir,
# profiler, loggers, callbacks, plugins) or that evaluate and predict set themselves (devices).
TRAINER_OPTIONS = (
    "precision",
    "accelerator",
    "deterministic",
    "benchmark",
    "inference_mode",
    "steps_per_execution",
    "num_threads",
    "limit_test_batches",
    "limit_predict_batches",
)
# Options of this project's data modules that only the user's own command or settings give: a
# stored config never downloads, and so names no mirror and no checksum.
DATA_NEVER_STORED = ("mirrors", "md5")
# Hydra's keys that a stored node may hold: positional _args_ would pass options unchecked.
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_")
_PACKAGE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# Packages that trust= never names: this project's and its libraries' classes that a run's config
# may build are registered already, and the rest of them (and of Python's standard library:
# logging, gzip, zipfile, subprocess) is what a crafted config reaches for.
NEVER_TRUSTED = frozenset(
    {"experiments", "hydra_plugins", "torch", "lightning", "pytorch_lightning", "hydra", "omegaconf", "optuna"}
) | frozenset(sys.stdlib_module_names)
# A run's config has hundreds of values; a config of more is not one (a pickle's shared references
# can make a small file a huge or endless tree).
MAX_VALUES, MAX_DEPTH = 100_000, 32
_TOO_DEEP: Any = object()


def trusted_packages(value: Any) -> tuple[str, ...]:
    """``trust=`` as package names: a list of them, or one name alone (``trust=my_parts``)."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Iterable) else [value]
    bad = [n for n in names if not isinstance(n, str) or not _PACKAGE.fullmatch(n)]
    if bad:
        raise UserError(
            f"trust={value!r}: {bad[0]!r} is not a package name; pass the packages whose classes a run's "
            "config may build, e.g. trust=[my_parts]"
        )
    library = [n for n in names if str(n).split(".")[0] in NEVER_TRUSTED]
    if library:
        raise UserError(
            f"trust={value!r}: {library[0]} is not a package of your own; the classes of this project and of its "
            "libraries that a run's config may build are allowed without trust=, and no others are"
        )
    return tuple(dict.fromkeys(str(n) for n in names))


def stored_config(data: Any, source: str) -> DictConfig:
    """A stored config as a DictConfig of plain values, or one line saying why it is not one.

    A run saves its config resolved: a ``${...}`` in it was written by hand, and is refused
    before anything resolves it (it could read the environment or make nodes no check has seen).
    """
    if not isinstance(data, Mapping) or not data:
        raise UserError(f"{source} does not hold a run's config (a mapping of keys); use the config its run wrote")
    for count, (key, value) in enumerate(_leaves(data, "")):
        if count > MAX_VALUES or key is _TOO_DEEP:
            raise UserError(
                f"{source} holds more than {MAX_VALUES:,} values or {MAX_DEPTH} levels (or a loop): it is not a "
                "run's config; use the config its run wrote"
            )
        if isinstance(value, str) and "${" in value:
            raise UserError(
                f"{source}: {key} = {_short(value)} is an interpolation; a run saves its config resolved, "
                "so this one was edited: nothing in it is built; use the config its run wrote"
            )
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise UserError(
                f"{source}: {key} holds a {type(value).__name__}, not a plain value; it is not a run's "
                "config: use the one its run wrote"
            )
    try:
        return OmegaConf.create(dict(data))
    except Exception as err:  # noqa: BLE001 - OmegaConf's own refusal of a key or value: not a run's config
        raise UserError(f"{source} does not hold a run's config ({_short(str(err).splitlines()[0])})") from None


def rebuild_config(cfg: DictConfig, source: str, trust: Sequence[str], data_root: Path) -> DictConfig:
    """The part of a stored config that a rebuild builds (:data:`REBUILT`), checked and made safe:
    every ``_target_`` registered for its place or trusted, plain options, no download, data read
    from inside ``data_root`` only, and a trainer of :data:`TRAINER_OPTIONS`."""
    missing = [key for key in REQUIRED if cfg.get(key) is None]
    if missing:
        raise UserError(
            f"{source} does not hold a run's config ({', '.join(missing)} missing); use the config its run wrote"
        )
    plain: dict[str, Any] = OmegaConf.to_container(cfg)  # type: ignore[assignment]
    rebuilt = {key: plain[key] for key in REBUILT if key in plain}
    if isinstance(rebuilt["trainer"], dict):  # the other settings are never looked at, let alone built
        rebuilt["trainer"] = _trainer_options(rebuilt["trainer"], source)
    for place in PLACES:
        node = rebuilt.get(place)
        if place in ("scheduler", "task") and not node:
            continue  # none (scheduler=none), or the task that the data's kind picks
        if place == "task" and isinstance(node, dict) and "_target_" not in node:
            _check_plain(node, place, source, trust)  # options of the task that the data's kind picks
            continue
        if not isinstance(node, dict) or "_target_" not in node:
            raise UserError(f"{source}: {place} is not a node with a _target_; use the config its run wrote")
        defined = _allowed(node["_target_"], place, f"{place}._target_", source, trust)
        if defined is None:  # a class of a trusted package: its options are the user's business
            _check_plain(node, place, source, trust, nested=True)
            continue
        _check_plain({k: v for k, v in node.items() if k != "_target_"}, place, source, trust)
        if place in ("optimizer", "scheduler") and node.get("_partial_") is not True:
            raise UserError(
                f"{source}: {place} must be a factory (_partial_: true) of {node['_target_']}; use the config "
                "its run wrote"
            )
        if place == "data":
            rebuilt["data"] = _data_options(node, defined, source, data_root)
    for key in ("window", "monitor", "seed"):
        _check_plain(rebuilt.get(key), key, source, trust)
    if not isinstance(rebuilt["monitor"], str):
        raise UserError(
            f"{source}: monitor = {_short(rebuilt['monitor'])} is not a metric's name; use the config its run wrote"
        )
    return OmegaConf.create(rebuilt)


def _allowed(target: Any, place: str, key: str, source: str, trust: Sequence[str]) -> str | None:
    """The registered class (its own module.qualname) that ``target`` names at ``place``, None
    for a class of a trusted package; else one line saying why it is not allowed."""
    registered = REGISTERED.get(target) if isinstance(target, str) else None
    if registered is not None and registered[0] == place:
        _, defined = registered
        try:
            found = get_object(target)
        except Exception:  # noqa: BLE001 - a re-export this version does not have
            found = None
        if inspect.isclass(found) and f"{found.__module__}.{found.__qualname__}" == defined:
            return defined
    elif isinstance(target, str) and _is_trusted_class(target, trust, key, source):
        return None
    elsewhere = f" (it is registered as a {PLACES[registered[0]]})" if registered is not None else ""
    _refuse(target, key, source, elsewhere)


def _refuse(target: Any, key: str, source: str, why: str = "") -> NoReturn:
    own = target.split(".")[0] if isinstance(target, str) and "." in target else None
    # Never the advice to trust a library or this project: that is what a crafted config would want.
    trust = (
        f", or, for a class of your own package that you trust, pass trust=[{own}]"
        if own is not None and own not in NEVER_TRUSTED and _PACKAGE.fullmatch(own)
        else ""
    )
    raise UserError(
        f"{source}: {key} = {_short(target)} is not allowed{why}: a run's config builds only the classes "
        "registered for each place (this project's data modules, models and tasks, torch's optimizers and "
        f"schedulers, the Trainer); use the config its run wrote{trust}"
    )


def _is_trusted_class(target: str, trust: Sequence[str], key: str = "", source: str = "") -> bool:
    """Whether ``target`` is a class defined in one of the ``trust`` packages (imported only then).
    With ``key``: a target under a trusted package that is not such a class is one line saying why."""
    package = next((p for p in trust if target.startswith(f"{p}.")), None)
    if package is None:
        return False
    try:
        found = get_object(target)
    except Exception as err:  # noqa: BLE001 - a target that cannot be found cannot be allowed either
        if not key:
            return False
        reason = " ".join(str(err).split())[:150]
        raise UserError(
            f"{source}: {key} = {_short(target)} cannot be imported ({reason}); check the name, and that "
            f"package {package} is installed or on PYTHONPATH"
        ) from None
    module = getattr(found, "__module__", None) or ""
    if inspect.isclass(found) and (module == package or module.startswith(f"{package}.")):
        return True
    if key:
        raise UserError(
            f"{source}: {key} = {_short(target)} is not allowed: trust=[{package}] lets through the classes defined "
            f"in {package}, and this is {'a class of ' + module if inspect.isclass(found) else 'not a class'}"
        )
    return False


def _check_plain(node: Any, key: str, source: str, trust: Sequence[str], nested: bool = False) -> None:
    """Refuse a ``_target_`` or ``_args_`` inside options; ``nested``: below a trusted class,
    where a ``_target_`` of a trusted class is allowed too."""
    if isinstance(node, dict):
        for name, value in node.items():
            full = f"{key}.{name}"
            if name == "_args_" and not nested:
                raise UserError(
                    f"{source}: {full} passes positional options, which a run's config never holds; use the "
                    "config its run wrote"
                )
            if name == "_target_":
                if not nested:
                    raise UserError(
                        f"{source}: {full} = {_short(value)} is not allowed: options of a run's config are plain "
                        "values, never objects to build; use the config its run wrote"
                    )
                if not isinstance(value, str) or not _is_trusted_class(value, trust, full, source):
                    _refuse(value, full, source)
            _check_plain(value, full, source, trust, nested)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_plain(value, f"{key}[{index}]", source, trust, nested)


def _data_options(node: dict[str, Any], defined: str, source: str, data_root: Path) -> dict[str, Any]:
    """A data node of this project's class with the options that only the user gives taken out:
    no download, no mirrors or checksums, files by plain name in a folder inside ``data_root``."""
    parameters = inspect.signature(get_object(defined)).parameters
    options = {k: v for k, v in node.items() if k not in DATA_NEVER_STORED}
    if "download" in parameters:
        options["download"] = False
    files = options.get("files")
    if isinstance(files, dict):
        for role, name in files.items():
            if not isinstance(name, str) or name in ("", ".", "..") or re.search(r"[/\\\0]", name):
                raise UserError(
                    f"{source}: data.files.{role} = {_short(name)} is not a plain file name; a run's config names "
                    "the files of its data folder only; use the config its run wrote"
                )
    if "data_dir" in parameters:
        default = parameters["data_dir"].default
        given = options.get("data_dir", None if default is inspect.Parameter.empty else default)
        folder = Path(str(given)).expanduser().resolve() if given is not None else None
        root = data_root.expanduser().resolve()
        if folder is None or (folder != root and root not in folder.parents):
            raise UserError(
                f"{source}: data.data_dir = {_short(given)} is outside your data folder {root}: a run's config "
                "reads data only from there, and never downloads; to read that folder, point EXPERIMENTS_DATA "
                "at it or at a folder above it"
            )
    return options


def _trainer_options(node: dict[str, Any], source: str) -> dict[str, Any]:
    options = {k: v for k, v in node.items() if k == "_target_" or k in TRAINER_OPTIONS}
    for name, value in options.items():
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise UserError(
                f"{source}: trainer.{name} = {_short(value)} is not a plain value; use the config its run wrote"
            )
    return options


def _leaves(node: Any, key: str, depth: int = 0) -> Iterable[tuple[str, Any]]:
    """Every key and value of a plain container, keys included (as values: a key is text too);
    ``(_TOO_DEEP, None)`` below :data:`MAX_DEPTH` levels (a list that holds itself, say)."""
    if depth > MAX_DEPTH:
        yield _TOO_DEEP, None
    elif isinstance(node, Mapping):
        for name, value in node.items():
            full = f"{key}.{name}" if key else str(name)
            yield full, name
            yield from _leaves(value, full, depth + 1)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{key}[{index}]", depth + 1)
    else:
        yield key, node


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:117]}..."
