"""``python -m experiments.train``: fit, test the best checkpoint, and leave the run's files.

Run directory: ``config.yaml``, ``metrics.json``, ``history.csv``, ``learning_curves.png``,
``tensorboard/`` and ``checkpoints/`` (``best.ckpt``, ``last.ckpt``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from experiments.callbacks import FitTime, History, ResumeState, TrainingStarted
from experiments.checkpoints import check_resumable, checkpoint_to_resume, load_weights, read_checkpoint
from experiments.cli import run_cli, user_errors_exit
from experiments.config import (
    CONFIG_DIR,
    build,
    build_callbacks,
    build_trainer,
    check_config,
    check_monitor,
    instantiate_group,
    pruning_callbacks,
    settle_auto_settings,
)
from experiments.data.contract import split_tensors
from experiments.diagnosis import Diagnosis, diagnose, target_variance
from experiments.distributed import ddp_job
from experiments.engine.tensorboard import purge_tensorboard_after, write_tensorboard_hparams
from experiments.record import RunRecord, run_job
from experiments.runs import save_config, write_json
from experiments.signals import raise_if_terminated
from experiments.tasks import task_kind

log = logging.getLogger(__name__)


def _hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The settings that tell runs apart, for TensorBoard's HPARAMS tab."""
    keys = ("data", "model", "optimizer", "scheduler", "task", "seed")
    # Each node is resolved where it sits, so interpolations such as ${paths.data_dir} still
    # find the rest of the config.
    plain = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in keys
        if cfg.get(k) is not None
    }
    plain["trainer"] = {k: cfg.trainer.get(k) for k in ("max_epochs", "precision", "accelerator")}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in ("_partial_",):
                    walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", plain)
    return flat


def _log_hyperparameters(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    params = _hyperparameters(cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            write_tensorboard_hparams(logger, params, metrics, trainer.global_step)
        else:
            logger.log_hyperparams(params)


def train(cfg: DictConfig, record: RunRecord | None = None) -> dict[str, Any]:
    """Fit ``cfg`` and test its best checkpoint; returns what is written to ``metrics.json``.

    ``record`` (from :func:`experiments.record.run_job`) is told when the run's checks have passed
    and training starts, and sees the trainer's progress for its ending line."""
    run_dir = Path(cfg.paths.output_dir)
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, task = build(cfg)
    if OmegaConf.select(cfg, "task._target_") is None:  # a task of one's own may log other names
        check_monitor(str(cfg.monitor), type(task).metric_names)
    resume_from = checkpoint_to_resume(cfg, run_dir)
    if resume_from is not None:
        # Refuse a missing, unsafe or mismatched checkpoint in one line, before anything is written.
        resumed = read_checkpoint(resume_from)
        check_resumable(resumed, resume_from)
        ResumeState.check(resumed, resume_from)
        load_weights(task, resumed, resume_from, "the model of this config")
    # FitTime: fit seconds summed over every segment of a resumed run (kept in its checkpoints).
    clock = FitTime()
    if resume_from is not None and cfg.get("resume"):
        clock.carry_over(run_dir / "metrics.json", int(resumed.get("global_step", -1)))
    callbacks = build_callbacks(cfg) + pruning_callbacks(cfg.monitor) + [clock]
    if record is not None:
        callbacks.append(TrainingStarted(lambda: record.accepted(cfg)))
    loggers = instantiate_group(cfg.get("logger"))
    for logger in loggers:
        if resume_from is not None:
            # TensorBoard hides what the interrupted run logged after its checkpoint, so the curves
            # of the resumed run carry on without doubled points.
            purge_tensorboard_after(logger, int(resumed.get("global_step", 0)))
        elif record is not None and record.starts_over:
            purge_tensorboard_after(logger, 0)  # an earlier start that kept no checkpoint
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    settle_auto_settings(cfg, trainer, task, datamodule)  # before config.yaml: it shows the numbers
    if record is not None:
        record.started(trainer)
    if trainer.is_global_zero and (record is None or not record.resuming):
        save_config(cfg, run_dir)  # a continued run keeps its own (see RunRecord.accepted)

    with ddp_job(trainer):
        # The full state (optimizer, loops, random state, loader position), read with
        # weights_only=True like every checkpoint: a checkpoint can never run code.
        clock.start()
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        raise_if_terminated()  # SIGTERM after Lightning's last chance to raise it
        if record is not None:
            record.accepted(cfg)  # a continued run with nothing left to train never started training
        fit_seconds = clock.seconds()

        checkpoint = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
        best_path = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
        final_val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        diverged = _diverged(trainer.callback_metrics, cfg.monitor)
        # Before testing: loading the best checkpoint rewinds the History callback to that epoch.
        history = next((c for c in callbacks if isinstance(c, History)), None)
        if not final_val and history is not None and history.rows:
            # A resumed run that had nothing left to train validated nothing: its last epoch's row.
            final_val = {k: float(v) for k, v in history.rows[-1].items() if k.startswith("val/")}
        diagnosis = _diagnose(history, datamodule, task) if history and not diverged else None
        tested = trainer.test(task, datamodule=datamodule, ckpt_path=best_path, weights_only=True, verbose=False)
        test_metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
        raise_if_terminated()

    metrics: dict[str, Any] = {
        "status": "failed" if diverged else "completed",
        **({"error": f"diverged: {diverged} at epoch {trainer.current_epoch}; lower optimizer.lr"} if diverged else {}),
        "experiment": cfg.get("name"),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 3),
        "monitor": cfg.monitor,
        "best": float(checkpoint.best_model_score) if checkpoint and checkpoint.best_model_score is not None else None,
        "best_checkpoint": str(Path(best_path).relative_to(run_dir)) if best_path else None,
        "val": final_val,
        "test": test_metrics,
        "diagnosis": diagnosis.as_dict() if diagnosis else None,
        "restarts": record.restarts if record is not None else 0,
    }
    hparam_metrics = {f"best/{cfg.monitor.replace('/', '_')}": metrics["best"], **test_metrics}
    if trainer.is_global_zero:  # other ranks' loggers are stand-ins without a writer
        _log_hyperparameters(trainer, cfg, {k: v for k, v in hparam_metrics.items() if v is not None})
        write_json(run_dir / "metrics.json", metrics)
        summary = " ".join(f"{k}={v:.4f}" for k, v in sorted(test_metrics.items()))
        print(f"{cfg.get('name')}: {summary} | epochs={metrics['epochs']} fit={fit_seconds:.1f}s | {run_dir}")
        if diagnosis:
            print(diagnosis.message)
    return metrics


def _diverged(values: dict[str, Any], monitor: str) -> str | None:
    """``'val/loss=nan'`` when the monitored value or the training loss ended non-finite, else None."""
    for name in (monitor, "train/loss"):
        if name in values and not math.isfinite(float(values[name])):
            return f"{name}={float(values[name])}"
    return None


def _diagnose(history: History, datamodule: Any, task: Any = None) -> Diagnosis | None:
    """The diagnosis of the run's learning curves, against the trivial loss that the data's task
    kind defines on the training targets. A kind that defines none (forecasting, whose yardstick is
    its naive baseline) still hears that its run diverged, against the loss of predicting the mean
    of the targets, where its loss is the mean squared error."""
    spec = datamodule.spec
    _, targets = split_tensors(datamodule, "train")
    baseline = task_kind(spec.task).trivial_loss(targets, spec)
    if baseline is not None:
        return diagnose(history.rows, baseline)
    if getattr(task, "loss_name", None) != "mse":
        return None
    verdict = diagnose(history.rows, target_variance(targets))
    return verdict if verdict is not None and verdict.verdict == "diverged" else None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors_exit
def _main(cfg: DictConfig) -> float | None:
    """The objective of a sweep: the best monitored value, or None for a failed or pruned trial.

    How the job ends (completed, failed, pruned, interrupted by Ctrl-C or SIGTERM) is recorded by
    :func:`experiments.record.run_job`: in a multirun a failing trial is recorded and the sweep goes
    on; a single run exits non-zero.
    """
    metrics = run_job(cfg, lambda record: train(cfg, record))
    return metrics["best"] if metrics is not None else None


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
