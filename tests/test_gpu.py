"""GPU runs: bf16 mixed precision, data kept on the GPU, and DDP over the GPUs of one node.
Skipped cleanly where there is no CUDA device."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from experiments.config import build, build_trainer

from reliability_helpers import run

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@needs_gpu
def test_bf16_run_keeps_its_data_on_the_gpu(compose_train) -> None:
    cfg = compose_train("experiment=xor", "trainer=gpu", "trainer.max_epochs=50", "logger=none")
    L.seed_everything(cfg.seed)
    datamodule, task = build(cfg)
    trainer = build_trainer(cfg, logger=False, callbacks=[], enable_checkpointing=False)
    devices_as_yielded: set[str] = set()

    def record(batch, dataloader_idx):  # sees each batch as its loader yields it, before any transfer
        devices_as_yielded.update(t.device.type for t in batch)
        return batch

    task.on_before_batch_transfer = record
    trainer.fit(task, datamodule=datamodule)
    assert trainer.precision == "bf16-mixed"
    # The loaders hold the splits on the GPU (moved once, when each loader was made), so batches
    # are cut there and none crosses from the host.
    assert devices_as_yielded == {"cuda"}
    # (The training loader is the engine's chunked view of the in-memory loader: steps_per_execution.)
    for loader in (trainer.train_dataloader.loader, trainer.val_dataloaders):
        assert all(t.is_cuda for t in loader.tensors)
    assert not datamodule.train_set[0].is_cuda  # the data module's own copy stays where it was read
    assert float(trainer.callback_metrics["train/loss"]) < 0.69  # learnt something


@needs_gpu
def test_gpu_run_from_the_command_line(tmp_path: Path) -> None:
    result = run("train", "experiment=xor", "trainer=gpu", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["test/acc"] >= 0.75


@needs_two_gpus
def test_ddp_over_two_gpus(tmp_path: Path) -> None:
    result = run(
        "train", "experiment=xor", "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
