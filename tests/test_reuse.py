"""Another project reuses our modules with plain Lightning, without Hydra (the README's example)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import torch

from experiments.data import XORDataModule
from experiments.models import MLP
from experiments.tasks import ClassificationTask


def test_modules_train_with_a_plain_lightning_trainer(tmp_path: Path) -> None:
    L.seed_everything(0)
    data = XORDataModule()
    model = MLP(data.spec.input_shape, data.spec.output_shape, hidden=[8], activation="tanh")
    task = ClassificationTask(model, num_classes=2, optimizer=partial(torch.optim.Adam, lr=0.05))
    trainer = L.Trainer(
        max_epochs=300, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(task, datamodule=data)
    [metrics] = trainer.test(task, datamodule=data, verbose=False)
    assert metrics["test/acc"] == 1.0

    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        assert (torch.sigmoid(task(x)).view(-1) >= 0.5).long().tolist() == [0, 1, 1, 0]
