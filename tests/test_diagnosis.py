"""The verdict on a run's learning curves, from real trainings on small MNIST slices."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from experiments.config import CONFIG_DIR
from experiments.diagnosis import diagnose, label_entropy, target_variance
from experiments.train import train

from conftest import registered

# 300 training and 300 validation images: seconds per epoch, and small enough to memorise.
SLICE = [
    "experiment=mnist_mlp",
    "data.train_limit=600",
    "data.val_size=300",
    "logger=none",
    "callbacks.history.verbose=false",
]


def _run(compose_train: Callable[..., DictConfig], *overrides: str) -> dict:
    cfg = compose_train(*overrides)
    metrics = train(cfg)
    on_disk = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert on_disk["diagnosis"] == metrics["diagnosis"]
    assert (Path(cfg.paths.output_dir) / "learning_curves.png").is_file()
    return metrics["diagnosis"]


def test_long_unregularised_mlp_on_a_small_slice_is_overfitting(compose_train, capsys) -> None:
    diagnosis = _run(compose_train, *SLICE, "trainer.max_epochs=20")
    assert diagnosis["verdict"] == "overfitting", diagnosis
    assert diagnosis["trivial_loss"] == pytest.approx(math.log(10), rel=0.02)  # ~balanced digits
    for remedy in ("dropout", "weight decay", "early stopping", "augmentation"):
        assert remedy in diagnosis["message"]
    assert diagnosis["message"] in capsys.readouterr().out


def test_one_hidden_unit_for_one_epoch_is_underfitting(compose_train, capsys) -> None:
    diagnosis = _run(compose_train, *SLICE, "model.hidden=[1]", "trainer.max_epochs=1")
    assert diagnosis["verdict"] == "underfitting", diagnosis
    for remedy in ("capacity", "more epochs", "less regularisation"):
        assert remedy in diagnosis["message"]
    assert diagnosis["message"] in capsys.readouterr().out


@pytest.mark.slow
def test_mnist_mlp_preset_is_fine(mnist_mlp_run: tuple[dict, Path]) -> None:
    metrics, run_dir = mnist_mlp_run  # experiment=mnist_mlp as it ships (shared with test_mnist)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["diagnosis"] == metrics["diagnosis"]
    assert (run_dir / "learning_curves.png").is_file()
    assert metrics["diagnosis"]["verdict"] == "fine", metrics["diagnosis"]


def test_validation_loss_turning_up_while_training_loss_falls_is_overfitting() -> None:
    # The rule itself, on a curve shaped like the textbook picture (a real run shows the gap rule above).
    train_loss = [2.0, 1.0, 0.6, 0.4, 0.25, 0.15, 0.1, 0.05]
    val_loss = [2.0, 1.1, 0.8, 0.75, 0.8, 0.9, 1.0, 1.1]
    rows = [{"epoch": i + 1, "train/loss": t, "val/loss": v} for i, (t, v) in enumerate(zip(train_loss, val_loss))]
    verdict = diagnose(rows, baseline=2.3)
    assert verdict.verdict == "overfitting" and "turned up from 0.75 (epoch 4) to 1.1" in verdict.reason
    close = [{**row, "val/loss": row["train/loss"] + 0.05} for row in rows]
    assert diagnose(close, baseline=2.3).verdict == "fine"


def test_a_loss_that_blows_up_is_diverged_before_anything_else() -> None:
    # Far above the trivial loss, or above it after having learned: the steps are too large.
    rows = [{"epoch": i + 1, "train/loss": t, "val/loss": t} for i, t in enumerate([0.7, 3e3, 1e28])]
    verdict = diagnose(rows, baseline=0.693)
    assert verdict.verdict == "diverged" and "over 10 times the trivial loss" in verdict.reason
    assert "lower optimizer.lr" in verdict.message and "gradient_clip_val" in verdict.message
    risen = [{"epoch": i + 1, "train/loss": t, "val/loss": t} for i, t in enumerate([2.0, 0.5, 0.4, 2.5])]
    verdict = diagnose(risen, baseline=2.3)
    assert verdict.verdict == "diverged" and "rose from 0.4 (epoch 3) to 2.5" in verdict.reason
    # Stuck near the trivial loss from the start is still underfitting, not diverged.
    stuck = [{"epoch": i + 1, "train/loss": t, "val/loss": t} for i, t in enumerate([2.31, 2.4, 2.35])]
    assert diagnose(stuck, baseline=2.3).verdict == "underfitting"


def test_sgd_with_a_huge_learning_rate_is_diagnosed_as_diverged(compose_train) -> None:
    diagnosis = _run(
        compose_train,
        "experiment=xor",
        "optimizer=sgd",
        "optimizer.lr=1e30",
        "trainer.max_epochs=5",
        "logger=none",
        "callbacks.history.verbose=false",
    )
    assert diagnosis["verdict"] == "diverged", diagnosis  # was "underfitting, both near the trivial loss"
    assert "lower optimizer.lr" in diagnosis["message"]


def test_trivial_loss_is_label_entropy_or_target_variance() -> None:
    from experiments.data import DataSpec
    from experiments.tasks import task_kind

    assert label_entropy(torch.tensor([0, 1, 1, 0]), 2) == pytest.approx(math.log(2))
    assert label_entropy(torch.tensor([0, 0, 0, 1]), 2) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    )
    assert target_variance(torch.tensor([[2.0], [4.0], [6.0], [8.0]])) == pytest.approx(5.0)
    # Each task kind owns its baseline: forecasting has none (its yardstick is repeat-last-value).
    binary = DataSpec(input_shape=(2,), output_shape=(1,), task="classification", num_classes=2)
    assert task_kind("classification").trivial_loss(torch.tensor([0, 1, 1, 0]), binary) == pytest.approx(math.log(2))
    windows = DataSpec(input_shape=(4, 1), output_shape=(2, 1), task="forecasting")
    assert task_kind("forecasting").trivial_loss(torch.zeros(3, 2, 1), windows) is None


# Every registered model with a dropout option (conf/model/*.yaml): the remedies name model.dropout.
@pytest.mark.parametrize(
    "model", [m for m in registered("model") if "dropout" in (Path(CONFIG_DIR) / "model" / f"{m}.yaml").read_text()]
)
def test_every_model_takes_the_regularisation_knobs_from_config(compose_train, model: str) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    from experiments.config import build, instantiate_group

    cfg = compose_train(
        "data=mnist",
        f"model={model}",
        "model.dropout=0.3",
        "optimizer=adamw",
        "optimizer.weight_decay=0.05",
        "callbacks=[default,early_stopping]",
        "data.augment=true",
    )
    datamodule, task = build(cfg)
    assert datamodule.augment is True
    rates = [m.p for m in task.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and set(rates) == {0.3}
    optimizer = task.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.05
    assert any(isinstance(c, EarlyStopping) and c.monitor == "val/acc" for c in instantiate_group(cfg.callbacks))


def test_a_diverged_forecasting_run_is_diagnosed_diverged_and_a_sane_one_gets_no_verdict(
    compose_train: Callable[..., DictConfig],
) -> None:
    # Forecasting has no trivial-loss verdicts (its yardstick is the naive baseline), but a run
    # whose MSE ended at 1e9 on scaled series was "completed" without a word.
    small = ["experiment=sine_lstm", "data.num_rows=600", "trainer.max_epochs=3", "logger=none"]
    diverged = _run(compose_train, *small, "optimizer.lr=1e4")
    assert diverged is not None and diverged["verdict"] == "diverged", diverged
    assert "lower optimizer.lr" in diverged["message"]
    assert _run(compose_train, *small, "optimizer.lr=0.003") is None
