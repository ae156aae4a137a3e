"""``python -m experiments.evaluate ckpt_path=...``: test a checkpoint on its run's test split.

The data module, model and trainer settings are rebuilt from the config that the checkpoint
carries (its run's resolved config), so the file works wherever it was moved; the checkpoint is
loaded with ``weights_only=True``, so it cannot run code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from experiments.callbacks import ProgressBar
from experiments.checkpoints import checkpoint_config, load_weights
from experiments.config import CONFIG_DIR, build, build_trainer
from experiments.errors import run_cli, user_errors_exit
from experiments.tasks import Task


def restore(
    ckpt_path: str | os.PathLike[str], trust: Sequence[str] = (), config: str | os.PathLike[str] | None = None
) -> tuple[Path, DictConfig, L.LightningDataModule, Task, L.Trainer]:
    """Rebuild a finished run from the config its checkpoint carries (or ``config``, a run's
    ``config.yaml``, for an older checkpoint) and check that the checkpoint fits its model.

    Returns the checkpoint path, the run's config, the data module, the task (weights are loaded
    by the trainer, after it has set the run's precision) and a single-device trainer without
    loggers or callbacks. ``trust`` names the user's own packages the run's config may build.
    """
    return rebuild(*checkpoint_config(ckpt_path, trust, config))


def rebuild(
    ckpt: Path, run_cfg: DictConfig, checkpoint: dict[str, Any]
) -> tuple[Path, DictConfig, L.LightningDataModule, Task, L.Trainer]:
    """:func:`restore` from a checkpoint already read and its checked config (:func:`checkpoint_config`)."""
    L.seed_everything(run_cfg.seed, verbose=False)
    datamodule, task = build(run_cfg)
    load_weights(task, checkpoint, ckpt, "the model of its config")
    trainer = build_trainer(
        run_cfg,
        devices=1,
        num_nodes=1,
        strategy="auto",
        logger=False,
        callbacks=[ProgressBar()],  # a bar in a terminal only
        enable_checkpointing=False,
        enable_progress_bar=True,
    )
    return ckpt, run_cfg, datamodule, task, trainer


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test ``cfg.ckpt_path``; returns the test metrics."""
    ckpt, run_cfg, datamodule, task, trainer = restore(cfg.ckpt_path, list(cfg.get("trust") or []), cfg.get("config"))
    tested = trainer.test(task, datamodule=datamodule, ckpt_path=str(ckpt), weights_only=True, verbose=False)
    metrics = {k: float(v) for k, v in tested[0].items()}
    print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) + f" | {ckpt}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@user_errors_exit
def _main(cfg: DictConfig) -> Any:
    return evaluate(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
