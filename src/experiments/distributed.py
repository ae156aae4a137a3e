"""DDP processes started by Lightning under Hydra: one directory per run, also inside a sweep.

Lightning's ``ddp`` strategy starts ranks 1..n-1 by re-running the command line with
``hydra.run.dir`` set to the run's directory. Inside a multirun that command line still holds
``-m`` and the whole sweep, so every child would start a sweep of its own: duplicate output
directories and ranks that never meet (the known failing of the popular Lightning-Hydra template).
:func:`ddp_job` makes the children re-run only the current job, in the current job's directory.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.strategies.launchers.subprocess_script import (  # private: lightning 2.6
    _SubprocessScriptLauncher,
)
from omegaconf import DictConfig, read_write


@contextmanager
def ddp_job(trainer: L.Trainer) -> Iterator[None]:
    """Run ``trainer.fit``/``trainer.test`` inside this so that DDP children rerun just this job.

    On the way out it waits for the children, closes the process group and puts back the
    environment Lightning changed, so that the next job of a sweep starts its own processes.
    """
    launcher = getattr(trainer.strategy, "launcher", None)
    if (
        not isinstance(launcher, _SubprocessScriptLauncher)
        or launcher.cluster_environment.creates_processes_externally  # torchrun, SLURM, or a child
        or not HydraConfig.initialized()
    ):
        try:
            yield
        finally:
            _close_process_group()
        return
    hydra = cast(DictConfig, HydraConfig.get())  # the HydraConf schema, as a DictConfig at run time
    saved_argv, saved_env = sys.argv, dict(os.environ)
    # The children rebuild this job from its own overrides, in this job's directory, and log to
    # the terminal only: rank 0 alone writes files.
    sys.argv = [sys.argv[0], *hydra.overrides.task, "hydra/job_logging=stdout"]
    with read_write(hydra):
        hydra.run.dir = hydra.runtime.output_dir
    try:
        yield
    except BaseException:
        # A failed job's other ranks may wait forever in a collective: end them with it.
        launcher.kill(signal.SIGKILL)
        raise
    finally:
        sys.argv = saved_argv  # Hydra sets a fresh HydraConfig for every job, so run.dir can stay
        for process in launcher.procs:
            process.wait()
        _close_process_group()
        os.environ.clear()
        os.environ.update(saved_env)


def _close_process_group() -> None:
    # Every rank closes its process group itself. Left to the interpreter's exit, gloo's can abort
    # the process ("terminate called without an active exception", exit code -6); Lightning then
    # kills the whole run, and inside a sweep it kills the next job, whose other ranks then wait
    # forever.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
