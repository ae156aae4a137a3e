"""Python API: run an experiment the way the command line does, and load a finished run.

    from experiments import run, load_run

    metrics = run("experiment=xor", "seed=3")          # python -m experiments.train experiment=xor seed=3
    metrics["test"]["test/acc"]                         # what the run's metrics.json holds
    finished = load_run(metrics.run_dir)                # or a run folder, or a .ckpt file
    finished.model, finished.history, finished.predict()

``run`` composes the config with the same search path, defaults and overrides as the CLI (``config_dir``
is ``--config-dir``), gets the same run folder (``outputs/<name>/runs/<time>_<pid>`` under the current
folder, with ``.hydra/`` and ``train.log``), applies the same checks and prints the same lines. It
does not touch the caller's logging or warnings settings beyond the run, and leaves the process as
it found it (random generators, torch's threads and deterministic settings, environment
variables); a mistake in the overrides raises :class:`~experiments.errors.UserError` with the
CLI's one line.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from hydra import version
from hydra._internal.hydra import Hydra  # private: hydra 1.3 -- how @hydra.main runs a job
from hydra._internal.utils import create_config_search_path  # private: hydra 1.3
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

from experiments.cli import library_chatter_quieted
from experiments.config import CONFIG_DIR
from experiments.data.contract import eval_batch_size, split_tensors
from experiments.errors import UserError, describe
from experiments.predict import predictions
from experiments.record import run_job
from experiments.restore import Restored, restore
from experiments.runs import read_history, read_metrics
from experiments.train import train

__all__ = ["Metrics", "Run", "load_run", "run"]


class Metrics(dict[str, Any]):
    """The dict of a run's ``metrics.json``, plus the run's folder as ``run_dir``."""

    run_dir: Path


@dataclass
class _Failed:
    error: BaseException


# The second of the last run started here: run folders are named <time to the second>_<pid>, so two
# runs of one process must not start within the same second.
_last_start: int | None = None


def run(*overrides: str, config_dir: str | os.PathLike[str] | None = None) -> Metrics:
    """Train and test one experiment in this process, as ``python -m experiments.train *overrides``.

    ``overrides`` are the CLI's arguments (``"experiment=xor"``, ``"optimizer.lr=0.1"``,
    ``"+task.label_smoothing=0.1"``); ``config_dir`` is the CLI's ``--config-dir``: a folder of your
    own configs (models, data, tasks, callbacks, experiments, search spaces) searched after ours.
    Returns what the run writes to ``metrics.json`` (``metrics["test"]`` holds the test metrics),
    with the run folder as ``metrics.run_dir``. Sweeps (``-m``) and ``trainer.strategy=ddp`` (whose
    other processes rerun a command line) are the CLI's.
    """
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise UserError(f"overrides are strings such as 'experiment=xor', got {bad[0]!r}")
    search_path = create_config_search_path(CONFIG_DIR)
    if config_dir is not None:
        folder = Path(config_dir).expanduser().resolve()
        if not folder.is_dir():
            raise UserError(
                f"config_dir {folder} is not a folder; pass the folder that holds your model/, data/, ... configs"
            )
        # Exactly where the CLI's --config-dir goes: after our conf/, before structured configs.
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))

    _wait_for_a_new_second()
    try:
        with _caller_state_kept():
            return _run(overrides, search_path)
    finally:
        _mark_the_second()  # the folder is named when Hydra composes, a second or more after the start


def _run(overrides: Sequence[str], search_path: Any) -> Metrics:
    global_hydra, hydra_config = GlobalHydra.instance(), HydraConfig.instance()
    saved = (global_hydra.hydra, hydra_config.cfg, version.getbase())
    global_hydra.clear()
    hydra_config.cfg = None
    version.setbase("1.3")  # the CLI's @hydra.main(version_base="1.3")
    try:
        with library_chatter_quieted(), _run_log() as log:
            # task_name "train", like python -m experiments.train: the log is train.log.
            hydra = Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)
            job = hydra.run(
                config_name="train",
                task_function=lambda cfg: _job(cfg, log),
                overrides=[*overrides, "hydra.mode=RUN"],
                with_log_configuration=False,  # Hydra's would replace the caller's logging handlers
            )
        result = job.return_value
    except Exception as err:
        raise _one_line(err) from None
    finally:
        global_hydra.clear()
        global_hydra.hydra, hydra_config.cfg = saved[:2]
        if isinstance(saved[2], version.Version):  # else it was never set
            version.VersionBase.instance().setbase(saved[2])
    if isinstance(result, _Failed):
        raise _one_line(result.error) from None
    return result


@contextmanager
def _caller_state_kept() -> Iterator[None]:
    """The process as the caller had it, once ``run()`` returns (or raises): a run seeds every
    generator (Python, NumPy, torch, CUDA), turns deterministic algorithms on, sets torch's
    threads and adds environment variables (Lightning's ``PL_GLOBAL_SEED``, ``PL_SEED_WORKERS``,
    ``CUBLAS_WORKSPACE_CONFIG``): the caller's own draws, settings and environment go on as if
    the run had not happened."""
    import random

    import numpy as np

    environ = dict(os.environ)
    generators = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    settings = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
        torch.get_default_dtype(),
    )
    try:
        yield
    finally:
        for name in [n for n in os.environ if n not in environ]:
            del os.environ[name]
        os.environ.update(environ)
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.set_rng_state(generators[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        threads, deterministic, warn_only, cudnn_deterministic, benchmark, matmul, dtype = settings
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, benchmark
        torch.set_float32_matmul_precision(matmul)
        torch.set_default_dtype(dtype)


def _job(cfg: DictConfig, log: _RunLogHandler) -> Metrics | _Failed:
    """The CLI's single run (``train._main`` without its exit codes); failures are returned, so that
    Hydra doesn't print its 'Error executing job' line."""
    run_dir = Path(cfg.paths.output_dir)
    log.open(run_dir)

    def job(record: Any) -> dict[str, Any]:
        if str(cfg.trainer.get("strategy")) == "ddp" and "LOCAL_RANK" not in os.environ:
            # Lightning would start the other ranks by rerunning this process's command line.
            raise UserError(
                "run() trains in this process; trainer.strategy=ddp starts its other processes from a "
                "command line: use python -m experiments.train with the same overrides"
            )
        return train(cfg, record)

    try:
        metrics = run_job(cfg, job, cli=False)
    except Exception as err:  # noqa: BLE001 - recorded by run_job; returned for run() to raise as one line
        return _Failed(err)
    assert metrics is not None  # a single run: failures raise
    result = Metrics(metrics)
    result.run_dir = run_dir.resolve()
    return result


def _one_line(err: BaseException) -> BaseException:
    """The CLI's one line as a UserError, or the error itself for a bug (or with HYDRA_FULL_ERROR=1)."""
    if "1" in (os.environ.get("HYDRA_FULL_ERROR"), os.environ.get("EXPERIMENTS_FULL_ERROR")):
        return err
    message = describe(err)
    return UserError(message) if message is not None else err


def _wait_for_a_new_second() -> None:
    now = time.time()
    if _last_start is not None and int(now) <= _last_start:
        time.sleep(_last_start + 1 - now + 0.01)
    _mark_the_second()


def _mark_the_second() -> None:
    """Remember this second: a run's folder is named for a second between its start and its end,
    so the next run starts in a later one."""
    global _last_start
    _last_start = int(time.time())


class _RunLogHandler(logging.Handler):
    """Writes to ``<run dir>/train.log`` once the run folder exists (as Hydra's file handler does)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        self.file: logging.FileHandler | None = None

    def open(self, run_dir: Path) -> None:
        self.file = logging.FileHandler(run_dir / "train.log")  # the CLI's is empty when nothing is logged
        self.file.setFormatter(self.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


@contextmanager
def _run_log() -> Iterator[_RunLogHandler]:
    """The run's ``train.log``: what reaches the root logger at INFO during the run, as the CLI's
    Hydra logging writes it, without the console handler that would print it twice in a notebook."""
    root = logging.getLogger()
    level = root.level
    handler = _RunLogHandler()
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)


@dataclass
class Run:
    """A finished run, loaded: its config, its trained model and its history.

    ``model`` is the trained network (a plain ``nn.Module``, in eval mode on the CPU); ``task`` is the
    Lightning module around it (loss, metrics, ``predict_step``); ``history`` holds one dict per epoch
    (``history.csv``); ``metrics`` is ``metrics.json`` (None if the run wrote none).
    """

    run_dir: Path
    checkpoint: Path
    config: DictConfig
    model: nn.Module
    task: Any
    datamodule: Any
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    restored: Restored | None = field(default=None, repr=False)

    def column(self, name: str) -> list[float]:
        """One column of the history, e.g. ``run.column("val/loss")`` (None for epochs without it)."""
        return [row.get(name) for row in self.history]  # type: ignore[misc]

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What ``python -m experiments.predict`` computes: for the run's test split, or for
        ``inputs`` (``(N, *input_shape)``). Keys as predict's columns: ``prediction``, and
        ``probability`` for classification."""
        if inputs is None:
            self.datamodule.setup("test")
            inputs = split_tensors(self.datamodule, "test")[0]
        assert self.restored is not None  # load_run sets it
        trainer = self.restored.trainer(callbacks=[], enable_progress_bar=False, enable_model_summary=False)
        outputs = predictions(self.task, trainer, inputs, eval_batch_size(self.datamodule, default=len(inputs)))
        self.task.cpu().eval()  # as load_run handed it over
        return outputs


def load_run(
    run_dir_or_ckpt: str | os.PathLike[str],
    which: Literal["best", "last"] = "best",
    trust: Sequence[str] | str = (),
    config: str | os.PathLike[str] | None = None,
) -> Run:
    """Load a finished run from its folder (the ``which`` checkpoint: ``best`` or ``last``) or from a
    checkpoint file, wherever it lies: a checkpoint carries its run's config. Checkpoints are read
    with ``weights_only=True``, and the config is data (:mod:`experiments.stored`): it may build
    only the classes this project registers for each place, plus those defined in the packages
    named in ``trust`` (your own, e.g. ``trust=["my_parts"]``). ``config`` (a run's ``config.yaml``)
    is for checkpoints written before they carried their config. A damaged ``metrics.json`` or
    ``history.csv`` is one line naming it (:class:`~experiments.errors.UserError`)."""
    path = Path(run_dir_or_ckpt).expanduser()
    if which not in ("best", "last"):
        raise UserError(f"which={which!r}: pass 'best' or 'last'")
    if path.is_dir():
        best = read_metrics(path, strict=True).get("best_checkpoint")
        # metrics.json is data: it names a checkpoint of this run's checkpoints/ folder, or none.
        plain = isinstance(best, str) and re.fullmatch(r"checkpoints/[\w.-]+\.ckpt", best)
        ckpt = path / (str(best) if plain and which == "best" else f"checkpoints/{which}.ckpt")
        if not ckpt.is_file():
            raise UserError(f"{path} has no {ckpt.relative_to(path)}; pass a finished run's folder or a .ckpt file")
    elif path.is_file():
        ckpt = path
    else:
        raise UserError(f"{path} does not exist; pass a run folder (outputs/<name>/runs/<run>) or a .ckpt file")
    try:
        restored = restore(ckpt, trust, config)
    except Exception as err:  # a stored option its class refuses (Hydra wraps it): the CLI's one line
        raise _one_line(err) from None
    restored.task.eval()
    run_dir = restored.run_dir
    return Run(
        run_dir=run_dir,
        checkpoint=restored.checkpoint_path.resolve(),
        config=restored.config,
        model=restored.task.model,
        task=restored.task,
        datamodule=restored.datamodule,
        history=read_history(run_dir, strict=True),
        metrics=read_metrics(run_dir, strict=True) or None,
        restored=restored,
    )
