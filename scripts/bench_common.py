"""What the benchmarks share (``scripts/bench_xor.py``, ``scripts/bench_mnist.py``): a run's config
composed as the command line composes it, a bare Lightning Trainer with that run's settings, the
framework's Trainer with a clock, and medians of ratios.

Everything here goes through the engine's public pieces: ``experiments.engine.lightning_settings``
(a trainer config's arguments that Lightning's own Trainer takes) and
``experiments.engine.process.fitting_process_state`` (the process tricks of a fit, for a floor
that has them too); nothing is stripped by name or patched.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str], run_dir: str | Path | None = None, verbose: bool = False) -> Any:
    """``conf/train.yaml`` with ``overrides``, as ``python -m experiments.train`` composes it (Hydra's
    runtime config set), the run folder at ``run_dir``; History's per-epoch lines off unless ``verbose``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from experiments.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        if run_dir is not None:
            cfg.paths.output_dir = str(run_dir)
        if "history" in cfg.callbacks:
            cfg.callbacks.history.verbose = verbose
        del cfg.hydra
    return cfg


class Clock:
    """Wall and CPU seconds (all threads of the process) of a ``with`` block."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _timed_trainer() -> type:
    from experiments.engine import Trainer

    class TimedTrainer(Trainer):
        """``experiments.engine.Trainer`` whose fits are clocked: ``TimedTrainer.fits`` gets (wall,
        CPU) seconds of each ``fit`` (a config takes it as ``trainer._target_=bench_common.TimedTrainer``)."""

        fits: list[tuple[float, float]] = []

        def fit(self, *args: Any, **kwargs: Any) -> Any:
            with Clock() as clock:
                result = super().fit(*args, **kwargs)
            TimedTrainer.fits.append((clock.wall, clock.cpu))
            return result

    return TimedTrainer


def __getattr__(name: str) -> Any:
    """``TimedTrainer``, built on first use (it imports Lightning)."""
    if name == "TimedTrainer":
        globals()[name] = _timed_trainer()
        return globals()[name]
    raise AttributeError(name)


def bare_lightning_fit(cfg: Any, accelerator: str = "cpu", test: bool = True) -> dict[str, float]:
    """The task and data of ``cfg`` through Lightning's own Trainer with the run's settings
    (``lightning_settings``: one optimizer step per Lightning step), no callbacks, logger or
    checkpoints, with the engine's process tricks of a fit (the floor under any framework built
    on Lightning's Trainer); the fit's wall and CPU seconds and the test metrics."""
    import tempfile

    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from experiments.config import build
    from experiments.engine import lightning_settings
    from experiments.engine.process import fitting_process_state

    L.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build(cfg)
    settings = lightning_settings(OmegaConf.to_container(cfg.trainer, resolve=True))
    with tempfile.TemporaryDirectory() as root_dir:
        settings["default_root_dir"] = root_dir
        trainer = L.Trainer(**settings, callbacks=[], logger=False, enable_checkpointing=False)
        with fitting_process_state(torch.get_num_threads(), fork_safe_cuda_check=False), Clock() as clock:
            trainer.fit(task, datamodule=datamodule)
            if accelerator == "gpu":
                torch.cuda.synchronize()
        tested = trainer.test(task, datamodule=datamodule, verbose=False)[0] if test else {}
    return {"fit_seconds": clock.wall, "fit_cpu_seconds": clock.cpu, **{k: float(v) for k, v in tested.items()}}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No output, warnings or log lines from a trial (the benchmark prints its own lines)."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def spread(values: list[float], digits: int = 3) -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Ratios of paired measurements (the same round, adjacent in time)."""
    return [a / b for a, b in zip(numerators, denominators)]
