"""What a trial of an Optuna sweep needs at run time: its study, and pruning from the validation curve.

The sweeper (``hydra_plugins/experiments_sweeper``) launches trial number N as Hydra job number N,
so a trial finds itself in the study from the job's Hydra config alone, whether it runs in the
sweeper's process, a forked worker, or a SLURM job that reads the same storage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from optuna.exceptions import TrialPruned

SWEEPER_TARGET = "hydra_plugins.experiments_sweeper.optuna_sweeper.OptunaSweeper"

__all__ = ["SWEEPER_TARGET", "OptunaPruning", "TrialPruned", "pruning_callbacks", "storage_url", "open_storage"]


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The study's storage: ``storage`` (any SQLAlchemy URL) or a SQLite file in the sweep directory."""
    if storage:
        return storage
    return f"sqlite:///{(Path(sweep_dir) / 'optuna.db').resolve()}"


def open_storage(url: str, retries: int = 5, **heartbeat: Any) -> Any:
    """An RDB storage that waits for SQLite's lock rather than failing when trials report at once.

    ``heartbeat``: RDBStorage's ``heartbeat_interval``, ``grace_period`` and stale-trial callback.
    Two processes creating the same new database at once race on its schema (``UNIQUE constraint
    failed: alembic_version``, ``relation ... already exists``); the loser tries again, and then
    finds the schema the winner made.
    """
    import random
    import time

    import optuna
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(retries + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            if attempt == retries:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


class OptunaPruning(Callback):
    """Report the monitored validation value to the trial each epoch; stop the run when Optuna prunes it.

    Our own few lines rather than optuna-integration's PyTorchLightningPruningCallback, which is
    not installed with Optuna 5 and checks for Lightning versions by name.
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor

    # At the end of the training epoch (after its validation) rather than of validation, so that
    # History, placed before this callback, has written the epoch's row when the run stops.
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = trainer.current_epoch
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        if not math.isfinite(value) or self.trial.should_prune():
            raise TrialPruned(f"pruned at epoch {epoch + 1}: {self.monitor}={value:.4g}")


def pruning_callbacks(monitor: str) -> list[Callback]:
    """``[OptunaPruning]`` for a trial of our Optuna sweeper with a pruner, else ``[]``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return []
    hydra_cfg = cast(DictConfig, HydraConfig.get())  # the HydraConf schema, as a DictConfig at run time
    sweeper: Any = hydra_cfg.get("sweeper") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != SWEEPER_TARGET:
        return []
    if not (sweeper.get("pruner") or {}).get("_target_") or sweeper.pruner._target_.endswith("NopPruner"):
        return []
    import optuna
    from hydra.utils import instantiate

    from experiments.engine import optuna_trial

    url = storage_url(sweeper.get("storage"), hydra_cfg.sweep.dir)
    # The pruner is not stored with the study: each trial builds the sweep's own.
    study = optuna.load_study(
        study_name=sweeper.study_name, storage=open_storage(url), pruner=instantiate(sweeper.pruner)
    )
    trial = optuna_trial(study, int(hydra_cfg.job.num))
    return [] if trial is None else [OptunaPruning(trial, monitor)]
