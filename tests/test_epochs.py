"""The engine's own epoch loop (``trainer.own_epoch_loop``, :mod:`experiments.engine.epochs`) against
Lightning's own loop: the same run, bit for bit (history, metrics, checkpoints with their loops and
callback states, TensorBoard scalars), the same hooks in the same order, the same values where a
task logs beyond epoch means, and Lightning's loop wherever the own one stands aside."""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.engine.epochs import OwnEpochs
from experiments.train import train

from reliability_helpers import fit_hooks

sys.path.insert(0, str(Path(__file__).parent))  # reliability_helpers for the configs' _target_

# Every checkpoint written when taken, so that what a file holds does not depend on time.
NOW = [
    "callbacks.history.verbose=false",
    "callbacks.last_checkpoint.min_write_interval=0",
    "callbacks.model_checkpoint.min_write_interval=0",
]
# 256 samples in batches of 32 (8 steps an epoch), validation in 2 batches of 32; dropout and
# shuffling make the random state and the loader position matter.
BLOBS = [
    "experiment=xor",
    "name=blobs",
    "data._target_=reliability_helpers.BlobsDataModule",
    "data.batch_size=32",
    "+data.eval_batch_size=32",
    "model.hidden=[16]",
    "model.dropout=0.2",
    "trainer.max_epochs=5",
]
CASES = {
    "xor": ["experiment=xor", "trainer.max_epochs=40"],
    # chunks of 3 (3, 3, 2), step checkpoints inside chunks, a step scheduler, early stopping
    "blobs-fused": [
        *BLOBS,
        "trainer.steps_per_execution=3",
        "checkpoint_every_n_steps=5",
        "scheduler=cosine",
        "scheduler.T_max=40",
        "+task.scheduler_interval=step",
        "callbacks=[default,early_stopping]",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=0.05",
    ],
    "blobs-one-step": [*BLOBS, "trainer.steps_per_execution=1", "trainer.gradient_clip_val=0.5"],
    # float64 (64-true), plain SGD, History logging the model's w and b at each epoch's end
    "neuron": ["experiment=neuron", "trainer.max_epochs=25"],
    # a task logging a maximum, a sum, on-step values and numbers: Lightning's own log takes those
    "odd-logs": [*BLOBS, "+task._target_=reliability_helpers.OddLogsTask", "trainer.max_epochs=3"],
}


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _same(a: Any, b: Any, where: str = "") -> None:
    """``a`` equals ``b`` exactly, tensors bit for bit; the first difference is named."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            _same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _checkpoint(path: Path, run_dir: Path) -> dict[str, Any]:
    """A checkpoint without what differs between two runs of the same thing: the run folder in
    paths, fit seconds and the seconds of each history row."""
    loaded = torch.load(path, weights_only=True)
    text = str(run_dir)

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(text, "<run>")
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    loaded["callbacks"] = clean(loaded["callbacks"])
    loaded.pop("config")
    return loaded


def _run(compose: Callable[..., DictConfig], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    cfg = compose(*overrides, *NOW)
    cfg.paths.output_dir = str(run_dir)
    metrics = train(cfg)
    metrics.pop("fit_seconds")
    return metrics


@pytest.mark.parametrize("case", list(CASES))
def test_own_epoch_loop_leaves_the_run_lightnings_loop_leaves(
    compose_train: Callable[..., DictConfig], tmp_path: Path, case: str
) -> None:
    own, lightning = tmp_path / "own", tmp_path / "lightning"
    ours = _run(compose_train, own, CASES[case])
    theirs = _run(compose_train, lightning, [*CASES[case], "trainer.own_epoch_loop=false"])
    _same(ours, theirs, "metrics.json")
    assert _history(own) == _history(lightning)
    for name in ("last.ckpt", "best.ckpt"):
        _same(
            _checkpoint(own / "checkpoints" / name, own), _checkpoint(lightning / "checkpoints" / name, lightning), name
        )
    assert _scalars(own) == _scalars(lightning)
    if case == "blobs-fused":
        assert ours["epochs"] < 5  # early stopping stopped it
    if case == "odd-logs":
        assert {"val/max_input", "val/batches", "val/constant", "half_epoch"} <= set(_history(own)[0])


class Recorder(Callback):
    """Every fit hook, with its batch index where it has one, and the values callbacks see."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _record(self, name: str, trainer: Any, args: tuple[Any, ...]) -> None:
        index = next((a for a in args if isinstance(a, int)), None)
        seen = sorted(trainer.callback_metrics) if name.endswith("epoch_end") else None
        self.calls.append((name, trainer.current_epoch, trainer.global_step, index, seen))


def _recording(name: str) -> Any:
    def hook(self: Recorder, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self._record(name, trainer, args)

    hook.__name__ = name
    return hook


for _name in fit_hooks():
    setattr(Recorder, _name, _recording(_name))


@pytest.mark.parametrize("case", ["xor", "blobs-fused"])
def test_every_hook_runs_in_lightnings_order(
    compose_train: Callable[..., DictConfig], tmp_path: Path, case: str
) -> None:
    import lightning as L

    from experiments.config import build, build_callbacks
    from experiments.engine import Trainer

    calls = []
    for own in (True, False):
        cfg = compose_train(*CASES[case], *NOW, "trainer.max_epochs=3", "trainer.enable_progress_bar=false")
        cfg.paths.output_dir = str(tmp_path / str(own))
        L.seed_everything(cfg.seed, verbose=False)
        datamodule, task = build(cfg)
        recorder = Recorder()
        trainer = Trainer(
            steps_per_execution=cfg.trainer.steps_per_execution,
            own_epoch_loop=own,
            max_epochs=3,
            callbacks=[*build_callbacks(cfg), recorder],
            logger=False,
            enable_progress_bar=False,
            default_root_dir=str(tmp_path / str(own)),
        )
        trainer.fit(task, datamodule=datamodule)
        calls.append(recorder.calls)
    assert calls[0] == calls[1]
    names = {call[0] for call in calls[0]}
    assert {"on_train_batch_start", "on_before_backward", "on_validation_batch_end", "on_train_epoch_end"} <= names


def test_own_loop_stands_aside_where_it_does_not_apply(
    compose_train: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task that steps its own way (no fused steps), a profiler, and a loop switched off: every
    # epoch runs on Lightning's loop. XOR as it ships runs on the own loop.
    validations: list[int] = []
    validate = OwnEpochs._validate
    monkeypatch.setattr(OwnEpochs, "_validate", lambda self: (validations.append(1), validate(self))[1])
    for overrides in (
        ["+task._target_=reliability_helpers.OwnStepTask"],
        ["trainer.profiler=simple"],
        ["trainer.own_epoch_loop=false"],
    ):
        validations.clear()
        metrics = _run(compose_train, tmp_path / overrides[0].split("=")[0].strip("+"), [*BLOBS, *overrides])
        assert metrics["status"] == "completed" and validations == [], overrides
    _run(compose_train, tmp_path / "xor", ["experiment=xor", "trainer.max_epochs=3"])
    assert validations == [1, 1, 1]
