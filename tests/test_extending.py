"""The core is easy to extend: plain defaults with opt-in presets, one file per callback config,
models composed with window wrappers, any DataModule with a spec, registered task kinds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from experiments.config import build, check_config

from conftest import REPO, StartedCli, compose_config, selected


def test_the_plain_defaults_are_the_primer_recipe_and_any_group_swaps_alone(tmp_path: Path) -> None:
    plain = compose_config("train", [], tmp_path)
    assert plain.name == "mnist_mlp" and (plain.monitor, plain.monitor_mode) == ("val/acc", "max")
    # No experiment to take away: a data set or model chosen alone is what runs.
    swapped = compose_config("train", ["data=sine", "model=lstm"], tmp_path)
    assert swapped.name == "sine_lstm" and swapped.data._target_.endswith("SineDataModule")
    assert (swapped.monitor, swapped.monitor_mode) == ("val/loss", "min")  # sine reports no accuracy
    check_config(swapped)
    datamodule, task = build(swapped)
    assert type(task.model).__name__ == "LSTM" and task.model.output_shape == datamodule.spec.output_shape


@pytest.fixture(scope="module")
def command_line_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, StartedCli]]]:
    """This module's three runs from the command line, each in its own folder, started together
    (independent processes, the machine's cores) and each waited for by its own test: data=sine
    model=lstm from the checkout, a new model (my_models/gru.py) and a plain DataModule
    (plain_data.py), each found by ``python -m`` in the working folder, with its YAML through --config-dir."""
    root = tmp_path_factory.mktemp("command_line")
    sine, gru, plain = root / "sine", root / "gru", root / "plain"
    (gru / "my_models").mkdir(parents=True)
    (gru / "my_models" / "gru.py").write_text(GRU_MODULE)
    (gru / "conf" / "model").mkdir(parents=True)
    (gru / "conf" / "model" / "gru.yaml").write_text("_target_: my_models.gru.GRU\nhidden_size: 32\n")
    (plain / "conf" / "data").mkdir(parents=True)
    (plain / "plain_data.py").write_text(PLAIN_DATA)
    (plain / "conf" / "data" / "halves.yaml").write_text("_target_: plain_data.Halves\nbatch_size: 16\n")
    commands = {
        "sine": (
            "test_data_sine_model_lstm_trains_end_to_end_from_the_command_line",
            sine,
            REPO,
            [
                "data=sine",
                "model=lstm",
                "data.num_rows=400",
                "data.input_length=24",
                "data.horizon=8",
                "model.hidden_size=8",
                "trainer.max_epochs=1",
                "logger=none",
            ],
        ),
        # sine_lstm's window settings (channel independence, segments of 8 steps) wrap the GRU too;
        # python -m finds my_models in the working folder.
        "gru": (
            "test_a_new_model_is_one_python_file_and_one_yaml_file",
            gru,
            gru,
            [
                "--config-dir",
                str(gru / "conf"),
                "experiment=sine_lstm",
                "model=gru",
                "model.hidden_size=8",
                "data.num_rows=400",
                "data.input_length=24",
                "data.horizon=8",
                "trainer.max_epochs=1",
                "logger=none",
            ],
        ),
        "plain": (
            "test_a_plain_datamodule_with_dataloaders_runs_end_to_end",
            plain,
            plain,
            [
                "--config-dir",
                str(plain / "conf"),
                "data=halves",
                "model.hidden=[8]",
                "optimizer.lr=0.05",
                "trainer.max_epochs=5",
                "logger=none",
            ],
        ),
    }
    runs = {  # each started only when its test runs
        name: (folder, StartedCli("train", *args, f"hydra.run.dir={folder}/run", cwd=cwd))
        for name, (test, folder, cwd, args) in commands.items()
        if selected(request, test)
    }
    yield runs
    for _, started in runs.values():
        started.wait()


def test_data_sine_model_lstm_trains_end_to_end_from_the_command_line(command_line_runs) -> None:
    folder, started = command_line_runs["sine"]
    done = started.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["experiment"] == "sine_lstm"
    assert metrics["monitor"] == "val/loss" and "test/mse" in metrics["test"]


def test_one_callback_per_file_added_to_the_defaults(tmp_path: Path) -> None:
    import pytest
    from lightning.pytorch.callbacks import EarlyStopping

    from experiments.callbacks import ConfusionMatrix, FiniteGuard, ForecastFigure, History, ProgressBar, ResumeState
    from experiments.config import CONFIG_DIR, build_callbacks
    from experiments.engine import ModelCheckpoint
    from experiments.errors import UserError

    folder = Path(CONFIG_DIR) / "callbacks"
    for file in folder.glob("*.yaml"):
        if file.stem != "default":  # every other file is one callback under its own key
            assert file.read_text().startswith(f"# @package callbacks.{file.stem}\n"), file.name
    plain = build_callbacks(compose_config("train", [], tmp_path))
    assert [type(c) for c in plain] == [
        ProgressBar,
        ModelCheckpoint,
        History,
        ModelCheckpoint,
        ResumeState,
        ConfusionMatrix,
        ForecastFigure,
        FiniteGuard,
    ]
    added = build_callbacks(
        compose_config("train", ["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=2"], tmp_path)
    )
    assert [type(c) for c in added] == [type(c) for c in plain] + [EarlyStopping]
    assert added[-1].patience == 2 and added[-1].monitor == "val/acc"
    # The old spelling would drop every checkpoint without a word: refused in one line.
    with pytest.raises(
        UserError,
        match=r"^callbacks=early_stopping would replace the default callbacks .*callbacks=\[default,early_stopping\]",
    ):
        check_config(compose_config("train", ["callbacks=early_stopping"], tmp_path))
    check_config(compose_config("train", ["callbacks=[early_stopping]"], tmp_path))  # said on purpose


def test_plus_callbacks_says_how_to_add_one(tmp_path: Path) -> None:
    from reliability_helpers import call_cli  # run_cli around the Hydra main, as the console script

    code, _, err = call_cli("train", "+callbacks=early_stopping", f"hydra.run.dir={tmp_path}/run")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: +callbacks=early_stopping adds a second callbacks option, and callbacks already has one; "
        "list them instead, e.g. callbacks=[default,early_stopping]"
    )


GRU_MODULE = '''
"""A GRU: one file, a plain nn.Module sized from the data's shapes."""
from collections.abc import Sequence
import math
import torch
from torch import nn
from experiments.models.common import as_shape, sequence_shape


class GRU(nn.Module):
    """A GRU over the steps of a sequence and a linear head on its last hidden state."""

    def __init__(self, input_shape: Sequence[int], output_shape: Sequence[int], hidden_size: int = 32) -> None:
        super().__init__()
        self.input_shape, self.output_shape = as_shape(input_shape, "input_shape"), as_shape(output_shape, "output_shape")
        self.steps, features = sequence_shape(self.input_shape)
        self.gru = nn.GRU(features, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, math.prod(self.output_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded, _ = self.gru(x.reshape(len(x), self.steps, -1))
        return self.head(encoded[:, -1]).view(-1, *self.output_shape)
'''


def test_a_new_model_is_one_python_file_and_one_yaml_file(command_line_runs) -> None:
    tmp_path, started = command_line_runs["gru"]  # my_models/gru.py and conf/model/gru.yaml, run from there
    done = started.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test/mse" in metrics["test"]
    weights = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert weights["model.model.gru.weight_ih_l0"].shape == (3 * 8, 8)  # 8-step segments of one channel


PLAIN_DATA = '''
"""A plain LightningDataModule: torch DataLoaders and a spec, nothing of this project's base class."""
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from experiments.data import DataSpec


class Halves(L.LightningDataModule):
    """Points labelled by the side of a line they fall on."""

    def __init__(self, n: int = 300, batch_size: int = 16) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    @property
    def spec(self) -> DataSpec:
        return DataSpec(input_shape=(2,), output_shape=(1,), task="classification", num_classes=2)

    def setup(self, stage: str | None = None) -> None:
        x = torch.randn(self.n, 2, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] + x[:, 1] > 0).long()
        self.parts = {s: TensorDataset(x[i::3], y[i::3]) for i, s in enumerate(("train", "val", "test"))}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.parts["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.parts["val"], batch_size=50)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.parts["test"], batch_size=50)
'''


def test_a_plain_datamodule_with_dataloaders_runs_end_to_end(command_line_runs, monkeypatch) -> None:
    import sys

    from reliability_helpers import call_cli

    tmp_path, started = command_line_runs["plain"]  # plain_data.py and conf/data/halves.yaml, run from there
    run = tmp_path / "run"
    done = started.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["test/acc"] >= 0.9
    assert metrics["diagnosis"]["verdict"] in ("fine", "overfitting", "underfitting")  # read through the loader
    ckpt = run / "checkpoints" / "best.ckpt"
    # A run's config is data: a package of one's own is built only when trusted by name.
    # (evaluate and predict in this process as their console scripts run them, from the same folder:
    # the trained run above is the command line's, and finds plain_data there as python -m does)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        code, _, err = call_cli("predict", f"ckpt_path={ckpt}")
        assert code == 2 and "trust=[plain_data]" in err
        code, _, err = call_cli("predict", f"ckpt_path={ckpt}", "trust=[plain_data]")
        assert code == 0, err[-2000:]
        rows = (run / "predictions.csv").read_text().splitlines()
        assert rows[0].startswith("input_0,input_1,target,") and len(rows) == 1 + 100
        code, out, err = call_cli("evaluate", f"ckpt_path={ckpt}", "trust=[plain_data]")
        assert code == 0 and f"test/acc={metrics['test']['test/acc']:.4f}" in out, err[-2000:]
    finally:
        sys.modules.pop("plain_data", None)


def test_the_data_contract_is_checked_when_the_module_is_built(tmp_path: Path) -> None:
    import lightning as L
    import pytest

    from experiments.data import DataSpec
    from experiments.data.contract import check_datamodule
    from experiments.errors import UserError

    class NoLoaders(L.LightningDataModule):
        spec = DataSpec(input_shape=(2,), output_shape=(1,), task="regression")

    with pytest.raises(
        UserError, match=r"^data x.NoLoaders does not define train_dataloader, val_dataloader, test_dataloader"
    ):
        check_datamodule(NoLoaders(), "x.NoLoaders")
    with pytest.raises(UserError, match=r"^data x.Bare has no spec"):
        check_datamodule(L.LightningDataModule(), "x.Bare")
    with pytest.raises(UserError, match=r"not a LightningDataModule"):
        check_datamodule(object(), "x.Thing")


MEDIAN_KIND = '''
"""A task kind of one's own, in its own file: regression to the median (L1 loss), and data that asks for it."""
import lightning as L
import torch
import torch.nn.functional as F

from experiments.data import DataSpec, InMemoryDataModule
from experiments.tasks import Task, register_task_kind


@register_task_kind("median")
class MedianTask(Task):
    """Regression to the median: the L1 loss; its trivial predictor is the median target."""

    metric_names = ("mae",)

    @classmethod
    def trivial_loss(cls, targets, spec):
        return float((targets - targets.median()).abs().mean())

    def shared_step(self, batch, split):
        x, y = batch
        loss = F.l1_loss(self.model(x).reshape(y.shape), y.to(x.dtype))
        self.log_split(split, {"loss": loss, "mae": loss}, batch_size=len(x))
        return loss

    def predict_step(self, batch, batch_idx):
        return {"median": self.model(batch[0]).reshape(-1)}

    def describe_predictions(self, outputs, targets):
        return f"{int((outputs['median'] > 0).sum())} above zero"


class Skewed(InMemoryDataModule):
    """y = 2x plus rare large outliers: the median fit ignores them."""

    @property
    def spec(self):
        return DataSpec(input_shape=(1,), output_shape=(1,), task="median")

    def setup(self, stage=None):
        x = torch.linspace(-1, 1, 60).reshape(-1, 1)
        y = (2 * x + (torch.arange(60) % 10 == 0).float().reshape(-1, 1) * 5).reshape(-1)
        self.train_set, self.val_set, self.test_set = (x, y), (x[::3], y[::3]), (x[1::6], y[1::6])
'''


def test_a_new_task_kind_is_one_file_and_one_registration(tmp_path: Path, monkeypatch) -> None:
    from experiments import load_run, run
    from experiments.tasks import task_kinds
    from experiments.tasks.registry import _KINDS

    from reliability_helpers import call_cli

    (tmp_path / "median_kind.py").write_text(MEDIAN_KIND)
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "skewed.yaml").write_text("_target_: median_kind.Skewed\nbatch_size: 60\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        metrics = run(
            "data=skewed",
            "model=linear",
            "optimizer.lr=0.05",
            "trainer.max_epochs=40",
            "logger=none",
            "callbacks.history.verbose=false",
            config_dir=tmp_path / "conf",
        )
        assert "median" in task_kinds() and metrics["status"] == "completed"
        assert metrics["test"]["test/mae"] < 0.5 and set(metrics["val"]) >= {"val/loss", "val/mae"}
        assert metrics["diagnosis"]["trivial_loss"] > 0.5  # the kind's own baseline
        ckpt = metrics.run_dir / "checkpoints" / "best.ckpt"
        assert type(load_run(ckpt, trust=["median_kind"]).task).__name__ == "MedianTask"
        code, out, err = call_cli("predict", f"ckpt_path={ckpt}", "trust=[median_kind]")
        assert code == 0, err
        assert out.strip().splitlines()[-1].endswith("| 5 above zero")
        assert (metrics.run_dir / "predictions.csv").read_text().splitlines()[0] == "input,target,median"
    finally:
        _KINDS.pop("median", None)
        import sys

        sys.modules.pop("median_kind", None)
