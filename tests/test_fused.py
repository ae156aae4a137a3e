"""Fused steps (``trainer.steps_per_execution``): the same maths as one step per Lightning step.

Every comparison is exact: weights, optimizer state, step counts, ``history.csv`` and the test
metrics of K > 1 must equal those of K = 1 bit for bit on a deterministic CPU run.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from experiments.train import train

# 256 samples in batches of 32: 8 steps an epoch; K = 3 leaves a short last chunk every epoch.
# Dropout makes the random state matter, shuffling the loader order.
BLOBS = [
    "experiment=xor",
    "name=blobs",
    "data._target_=reliability_helpers.BlobsDataModule",
    "data.batch_size=32",
    "model.hidden=[16]",
    "model.dropout=0.2",
    "trainer.max_epochs=4",
    "callbacks.history.verbose=false",
]


def _train(compose: Callable[..., DictConfig], run_dir: Path, *overrides: str) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))  # reliability_helpers, as the CLI tests import it
    cfg = compose(*BLOBS, *overrides)
    cfg.paths.output_dir = str(run_dir)  # the callbacks' folders interpolate it
    return train(cfg)


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _assert_same_run(a: Path, b: Path) -> None:
    first = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    second = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == second["global_step"]
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name
    for x, y in zip(first["optimizer_states"][0]["state"].values(), second["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert first.get("lr_schedulers") == second.get("lr_schedulers")
    assert _history(a) == _history(b)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (a, b)]
    assert metrics[0]["test"] == metrics[1]["test"]
    assert metrics[0]["val"] == metrics[1]["val"]
    assert metrics[0]["best"] == metrics[1]["best"]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        # Per-step cosine schedule and gradient clipping: both are stepped inside the chunk.
        ["scheduler=cosine", "scheduler.T_max=32", "+task.scheduler_interval=step", "trainer.gradient_clip_val=0.05"],
        ["checkpoint_every_n_steps=5", "+trainer.limit_train_batches=7"],
    ],
    ids=["plain", "step-scheduler-and-clipping", "step-checkpoints-and-limit"],
)
def test_fused_steps_train_bit_identical_to_one_step_per_lightning_step(
    compose_train: Callable[..., DictConfig], tmp_path: Path, extra: list[str]
) -> None:
    single = _train(compose_train, tmp_path / "k1", "trainer.steps_per_execution=1", *extra)
    fused = _train(compose_train, tmp_path / "k3", "trainer.steps_per_execution=3", *extra)
    assert single["status"] == fused["status"] == "completed"
    _assert_same_run(tmp_path / "k1", tmp_path / "k3")
    steps = 7 if "+trainer.limit_train_batches=7" in extra else 8
    last = torch.load(tmp_path / "k3" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 * steps  # global_step counts optimizer steps, not chunks


def test_step_checkpoint_lands_on_the_exact_step_inside_a_chunk(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # Steps 5 and 10 fall inside chunks of 4 (batches 4..7 of epoch 1, 0..3 of epoch 2).
    _train(
        compose_train,
        tmp_path / "run",
        "trainer.steps_per_execution=4",
        "checkpoint_every_n_steps=5",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_epochs=0",
        "callbacks.last_checkpoint.save_on_train_epoch_end=false",
    )
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 15


def test_max_steps_stops_inside_a_chunk(compose_train: Callable[..., DictConfig], tmp_path: Path) -> None:
    _train(compose_train, tmp_path / "run", "trainer.steps_per_execution=3", "+trainer.max_steps=10")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 10


def _validated(run_dir: Path) -> list[bool]:
    """Per row of history.csv: whether it holds the validation of its epoch."""
    return [bool(row.get("val/loss")) for row in _history(run_dir)]


# An epoch scheduler stepping every epoch: a stop that looks like an epoch's end would step it.
EPOCH_SCHEDULER = ["scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"]


def test_max_steps_inside_an_epoch_stops_the_same_way_for_every_k(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # Step 12 is batch 4 of epoch 2's 8: inside a chunk of 3, and in the only (last) chunk of 16,
    # which once made Lightning validate there and step the epoch scheduler.
    for k in (1, 3, 16):
        _train(
            compose_train,
            tmp_path / f"k{k}",
            f"trainer.steps_per_execution={k}",
            "+trainer.max_steps=12",
            *EPOCH_SCHEDULER,
        )
        last = torch.load(tmp_path / f"k{k}" / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == 12
    _assert_same_run(tmp_path / "k1", tmp_path / "k3")
    _assert_same_run(tmp_path / "k1", tmp_path / "k16")
    # Epoch 2 stopped before its validation: its row has its training values, and no validation
    # values (not epoch 1's again).
    assert _validated(tmp_path / "k1") == [True, False]
    assert _history(tmp_path / "k1")[1]["train/loss"]


def test_a_run_stopped_by_max_steps_continues_as_if_never_stopped(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # Straight to step 20 (epoch 3, batch 4) with K=1; or to step 12 with K=16 and on to 20 with
    # K=3: the rest of epoch 2 is trained, validated and recorded, bit for bit.
    _train(compose_train, tmp_path / "straight", "trainer.steps_per_execution=1", "+trainer.max_steps=20")
    run = tmp_path / "continued"
    _train(compose_train, run, "trainer.steps_per_execution=16", "+trainer.max_steps=12")
    _train(compose_train, run, "trainer.steps_per_execution=3", "+trainer.max_steps=20", f"resume={run}")
    _assert_same_run(tmp_path / "straight", run)
    assert _validated(run) == [True, True, False]


@pytest.mark.parametrize(("first_k", "then_k"), [(1, 1), (3, 1), (16, 3)])
def test_a_run_stopped_by_max_steps_at_an_epochs_end_continues_as_if_never_stopped(
    compose_train: Callable[..., DictConfig], tmp_path: Path, first_k: int, then_k: int
) -> None:
    # Step 16 is the last batch of epoch 2. Lightning took any checkpoint of a run with max_steps as
    # one inside an epoch: continued, epoch 2's end ran again with no batch and no validation (an
    # empty history row in place of the real one), and one more shuffle changed every later epoch.
    _train(compose_train, tmp_path / "straight", "trainer.steps_per_execution=1", "+trainer.max_steps=28")
    run = tmp_path / "continued"
    _train(compose_train, run, f"trainer.steps_per_execution={first_k}", "+trainer.max_steps=16")
    assert _validated(run) == [True, True]
    _train(compose_train, run, f"trainer.steps_per_execution={then_k}", "+trainer.max_steps=28", f"resume={run}")
    _assert_same_run(tmp_path / "straight", run)
    assert _validated(run) == [True, True, True, False]


def test_a_checkpoint_inside_a_chunk_resumes_the_same_with_another_k(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # The step-10 checkpoint of a K=3 run lies inside a chunk (batches 0-2 of epoch 2); Lightning
    # counted chunks, a K=1 run counts batches: resumed with K=1 (or 8), epoch 2 still validates.
    import shutil

    copy = tmp_path / "step10.ckpt"
    keep = ["+callbacks.copy._target_=reliability_helpers.CopyCheckpointAt", "+callbacks.copy.step=10"]
    k3 = tmp_path / "k3"
    _train(
        compose_train,
        k3,
        "trainer.steps_per_execution=3",
        "checkpoint_every_n_steps=5",
        *keep,
        f"+callbacks.copy.to={copy}",
    )
    assert torch.load(copy, weights_only=True)["global_step"] == 10
    _train(compose_train, tmp_path / "straight", "trainer.steps_per_execution=1")
    for k in (1, 8):
        resumed = tmp_path / f"resumed_k{k}"
        shutil.copytree(k3, resumed)
        shutil.copy(copy, resumed / "checkpoints" / "last.ckpt")
        _train(compose_train, resumed, f"trainer.steps_per_execution={k}", f"resume={resumed}")
        _assert_same_run(tmp_path / "straight", resumed)
        assert _validated(resumed) == [True] * 4


def test_epochs_without_validation_have_empty_validation_columns(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    for k in (1, 3):
        _train(
            compose_train, tmp_path / f"k{k}", f"trainer.steps_per_execution={k}", "trainer.check_val_every_n_epoch=2"
        )
    _assert_same_run(tmp_path / "k1", tmp_path / "k3")
    assert _validated(tmp_path / "k1") == [False, True, False, True]
    # ... in the printed epoch lines too (a dash), and read back as missing.
    from experiments.runs import read_history

    assert [("val/loss" in row) for row in read_history(tmp_path / "k1")] == [False, True, False, True]


def test_a_task_that_steps_its_own_way_trains_unfused_and_says_so(
    compose_train: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from reliability_helpers import OwnStepTask

    OwnStepTask.steps_taken = 0
    with caplog.at_level("WARNING", logger="experiments.engine"):
        metrics = _train(
            compose_train, tmp_path / "run", "+task._target_=reliability_helpers.OwnStepTask", "trainer.max_epochs=2"
        )
    assert metrics["status"] == "completed"
    assert OwnStepTask.steps_taken == 16  # every step through its own optimizer_step
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("experiments.engine")]
    assert lines == ["steps_per_execution: OwnStepTask overrides optimizer_step; one optimizer step per Lightning step"]


def test_epoch_sums_add_up_as_lightnings_one_at_a_time_sums_bit_for_bit() -> None:
    # The engine keeps a step's logged value and sums an epoch's values at its end (or when a
    # checkpoint needs them); the result must be Lightning's running ``total + value * size``,
    # in the same floating-point type, wherever a checkpoint cuts the epoch.
    import random

    from experiments.engine.epoch_logs import add_up

    random.seed(0)
    for _ in range(100):
        dtype = random.choice([torch.float32, torch.float64])
        values = [torch.randn((), dtype=dtype) * 10 ** random.uniform(-6, 6) for _ in range(random.randint(1, 500))]
        sizes = [random.choice([32, 17, 1, 1000]) for _ in values]
        total, count = torch.tensor(0.0), torch.tensor(0)
        for value, size in zip(values, sizes):
            total, count = total + value * size, count + size
        cut = random.randint(0, len(values))
        first = add_up([torch.tensor(0.0), 0, values[:cut], sizes[:cut]])
        summed, counted = add_up([*first, values[cut:], sizes[cut:]])
        assert summed.dtype == total.dtype and summed.item() == total.item() and counted == int(count)
        assert (summed / torch.tensor(counted)).item() == (total / count).item()


def test_training_metrics_per_sample_match_lightnings_own_epoch_means(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # The engine computes ``sample_metrics`` once per chunk and sums the samples in float64; a
    # bare Lightning Trainer logs each batch's mean (Task.log_sample_metrics, computed at once).
    # Same weights, same epoch values (the loss bit for bit, the accuracy to float32 rounding).
    import lightning as L

    from experiments.config import build
    from experiments.engine import Trainer

    sys.path.insert(0, str(Path(__file__).parent))
    settings = dict(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=str(tmp_path),
    )
    values = []
    for make in (lambda: L.Trainer(**settings), lambda: Trainer(steps_per_execution=3, num_threads=1, **settings)):
        cfg = compose_train(*BLOBS)
        L.seed_everything(0, verbose=False)
        datamodule, task = build(cfg)
        trainer = make()
        trainer.fit(task, datamodule=datamodule)
        values.append({k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
    assert set(values[0]) == set(values[1]) == {"train/loss", "train/acc"}
    assert values[0]["train/loss"] == values[1]["train/loss"]
    assert values[0]["train/acc"] == pytest.approx(values[1]["train/acc"], rel=1e-6)
    assert 0.5 < values[1]["train/acc"] <= 1.0


def test_fit_seconds_include_reading_the_data(compose_train: Callable[..., DictConfig], tmp_path: Path) -> None:
    # The data module's setup runs inside trainer.fit before any callback hook; fit_seconds is
    # trainer.fit's time, as the README and the benchmark's plain loop count it.
    metrics = _train(
        compose_train,
        tmp_path / "run",
        "data._target_=reliability_helpers.SlowSetupBlobs",
        "+data.setup_seconds=1.0",
        "trainer.max_epochs=1",
    )
    assert metrics["status"] == "completed"
    assert metrics["fit_seconds"] >= 1.0


def test_long_lived_objects_are_left_to_the_garbage_collector_again_after_fitting(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    import gc

    from lightning.pytorch.callbacks import Callback

    counts: list[int] = []

    class FreezeCount(Callback):
        def on_train_epoch_end(self, trainer: object, pl_module: object) -> None:
            counts.append(gc.get_freeze_count())

    from experiments.config import build
    from experiments.engine import Trainer

    sys.path.insert(0, str(Path(__file__).parent))

    def fit_one_epoch() -> None:
        datamodule, task = build(compose_train(*BLOBS))
        options = dict(max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
        Trainer(callbacks=[FreezeCount()], **options).fit(task, datamodule=datamodule)

    fit_one_epoch()
    assert counts and counts[0] > 10_000  # torch's, Lightning's and Hydra's objects, left alone while fitting
    assert gc.get_freeze_count() == 0
    # A process that froze objects itself keeps them frozen, and its count, after a fit.
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        counts.clear()
        fit_one_epoch()
        # (Frozen objects that are freed leave the count; a freeze here would have added thousands.)
        assert len(counts) == 1 and counts[0] <= frozen
        assert 0.9 * frozen < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


def test_a_logged_result_moves_to_another_device_and_stays_put_on_its_own() -> None:
    # experiments.engine skips Lightning's walk of a result whose tensors are all on the device
    # asked for; a move to another device (here the meta device) is still Lightning's.
    from lightning.pytorch.trainer.connectors.logger_connector import result as lightning_result

    from experiments.engine.process import repeated_result_moves_skipped

    walks = []
    walk = lightning_result.apply_to_collection

    def counted(*args: object, **kwargs: object) -> object:
        walks.append(1)
        return walk(*args, **kwargs)

    lightning_result.apply_to_collection = counted
    try:
        with repeated_result_moves_skipped():
            staying = lightning_result._ResultMetric(lightning_result._Metadata(fx="f", name="a"), is_tensor=True)
            assert staying.to(torch.device("cpu")) is staying and walks == []
            moving = lightning_result._ResultMetric(lightning_result._Metadata(fx="f", name="b"), is_tensor=True)
            moving.to(torch.device("meta"))
            assert walks and moving.value.device.type == "meta"
        # Undone when the fit ends: Lightning's own walk for a plain Trainer in the same process.
        walks.clear()
        again = lightning_result._ResultMetric(lightning_result._Metadata(fx="f", name="c"), is_tensor=True)
        again.to(torch.device("cpu"))
        assert walks
    finally:
        lightning_result.apply_to_collection = walk


@pytest.mark.parametrize("steps", [1, 3])
def test_sample_metrics_that_give_a_batch_mean_are_refused_in_one_line(
    compose_train: Callable[..., DictConfig], tmp_path: Path, steps: int
) -> None:
    # A mean in place of per-sample values would be averaged per chunk and change with K.
    from experiments.tasks import ClassificationTask

    class MeanAccuracy(ClassificationTask):
        def sample_metrics(self, outputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"acc": (outputs.argmax(dim=-1) == target).float().mean()}

    from experiments.config import build
    from experiments.engine import Trainer

    sys.path.insert(0, str(Path(__file__).parent))
    datamodule, task = build(compose_train(*BLOBS))
    task.__class__ = MeanAccuracy
    trainer = Trainer(
        steps_per_execution=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    with pytest.raises(
        ValueError,
        match=r"MeanAccuracy.sample_metrics\(\)\['acc'\] has shape \(\) for \d+ samples; it must give one value per sample",
    ):
        trainer.fit(task, datamodule=datamodule)


def test_a_batch_size_larger_than_the_data_trains_one_batch_of_all_of_it(
    compose_train: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # steps_per_execution=auto counts a step's FLOPs on a zero batch of the batch size: a batch size
    # of 10^12 once asked torch for 8 TB there (a 59-line traceback) where the loader makes one batch
    # of the 256 samples. The count is made on at most 512 rows and scaled.
    _train(compose_train, tmp_path / "all", "data.batch_size=256", "trainer.max_epochs=2")
    _train(compose_train, tmp_path / "huge", "data.batch_size=1000000000000", "trainer.max_epochs=2")
    _assert_same_run(tmp_path / "all", tmp_path / "huge")
