"""``python -m experiments.evaluate ckpt_path=...``: test a checkpoint on its run's test split.

The data module, model and trainer settings are rebuilt from the config that the checkpoint
carries (:mod:`experiments.restore`), so the file works wherever it was moved; the checkpoint is
loaded with ``weights_only=True``, so it cannot run code.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from experiments.cli import run_cli, user_errors_exit
from experiments.config import CONFIG_DIR
from experiments.restore import restore, trusted


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test ``cfg.ckpt_path``; returns the test metrics."""
    run = restore(cfg.ckpt_path, trusted(cfg.get("trust")), cfg.get("config"))
    trainer = run.trainer()
    # The trainer loads the weights again after setting the run's precision (float64 stays exact).
    tested = trainer.test(
        run.task, datamodule=run.datamodule, ckpt_path=str(run.checkpoint_path), weights_only=True, verbose=False
    )
    metrics = {k: float(v) for k, v in tested[0].items()}
    print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) + f" | {run.checkpoint_path}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@user_errors_exit
def _main(cfg: DictConfig) -> Any:
    return evaluate(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
