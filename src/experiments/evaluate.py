"""``python -m experiments.evaluate ckpt_path=...``: test a checkpoint on its run's test split.

The data module, model and trainer settings are rebuilt from the ``config.yaml`` of the run that
wrote the checkpoint; the checkpoint is loaded with ``weights_only=True``, so it cannot run code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from experiments.checkpoints import load_weights, read_checkpoint
from experiments.callbacks import ProgressBar
from experiments.config import CONFIG_DIR, build, build_trainer
from experiments.errors import run_cli, user_errors_exit
from experiments.runs import load_run_config
from experiments.tasks import Task


def restore(
    ckpt_path: str | Path, trust: Sequence[str] = ()
) -> tuple[Path, DictConfig, L.LightningDataModule, Task, L.Trainer]:
    """Rebuild a finished run from its config and check that the checkpoint fits its model.

    Returns the checkpoint path, the run's config, the data module, the task (weights are loaded
    by the trainer, after it has set the run's precision) and a single-device trainer without
    loggers or callbacks. ``trust`` names the user's own packages the run's config may build.
    """
    ckpt, run_cfg = load_run_config(ckpt_path, trust)
    L.seed_everything(run_cfg.seed, verbose=False)
    datamodule, task = build(run_cfg)
    checkpoint = read_checkpoint(ckpt)
    load_weights(task, checkpoint, ckpt, "the model in its run's config.yaml")
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
    ckpt, run_cfg, datamodule, task, trainer = restore(cfg.ckpt_path, list(cfg.get("trust") or []))
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
