"""Time series: windows, the ETT protocol, the forecasting task and the window models."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from experiments.config import build
from experiments.data import ETTDataModule, InMemoryLoader, SineDataModule
from experiments.data import ett as ett_module
from experiments.errors import UserError
from experiments.models import CNN, LSTM, MLP, Windowed
from experiments.tasks import ForecastingTask, task_for
from experiments.tasks.forecasting import repeat_last
from experiments.train import train

from conftest import SHARED_DATA
from reliability_helpers import call_cli

ETT_DIR = SHARED_DATA / "ett"
needs_ett = pytest.mark.skipif(not (ETT_DIR / "ETTh1.csv").is_file(), reason=f"no ETTh1.csv in {ETT_DIR}")


def ett(**options) -> ETTDataModule:
    module = ETTDataModule(data_dir=str(ETT_DIR), download=False, **options)
    module.setup()
    return module


def raw_ett(name: str = "ETTh1") -> torch.Tensor:
    with (ETT_DIR / f"{name}.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    return torch.tensor([[float(v) for v in row[1:]] for row in rows], dtype=torch.float64)


@needs_ett
def test_naive_baseline_on_the_etth1_protocol_counts_every_test_window() -> None:
    """The protocol check: repeat-last on ETTh1, M, H=96, all 2,785 test windows, through the task's metrics."""
    data = ETTDataModule(data_dir=str(ETT_DIR), download=False, input_length=96, horizon=96, eval_batch_size=256)
    task = task_for(data.spec, MLP(data.spec.input_shape, data.spec.output_shape, hidden=[]))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.test(task, datamodule=data, verbose=False)[0]
    assert len(data.test_set[0]) == 2785 and 2785 % 256 != 0  # a last partial batch that must count
    assert metrics["test/naive_mse"] == pytest.approx(1.294, abs=0.002)
    assert metrics["test/naive_mae"] == pytest.approx(0.713, abs=0.002)
    x, y = data.test_set
    exact = ((repeat_last(x, (96, 7)) - y) ** 2).double().mean()
    assert metrics["test/naive_mse"] == pytest.approx(float(exact), rel=1e-5)


@needs_ett
@pytest.mark.parametrize(("name", "horizon", "mse", "mae"), [("ETTh1", 720, 1.335, 0.755), ("ETTh2", 96, 0.432, 0.422)])
def test_naive_baseline_matches_the_published_repeat_rows(name: str, horizon: int, mse: float, mae: float) -> None:
    """Published: ETTh1-720 1.339/0.756, ETTh2-96 0.432/0.422, from loaders that dropped a last batch."""
    x, y = ett(name=name, input_length=336, horizon=horizon).test_set
    error = (repeat_last(x, (horizon, 7)) - y).double()
    assert float((error**2).mean()) == pytest.approx(mse, abs=0.002)
    assert float(error.abs().mean()) == pytest.approx(mae, abs=0.002)


@needs_ett
def test_ett_split_rows_and_scaler_follow_the_reference_protocol() -> None:
    length, horizon = 48, 24
    data = ett(input_length=length, horizon=horizon)
    raw = raw_ett().float()
    assert torch.allclose(data.scaler.mean, raw[:8640].double().mean(0).double(), atol=1e-4)
    for split, start, end in (
        (data.train_set, 0, 8640),
        (data.val_set, 8640 - length, 11520),
        (data.test_set, 11520 - length, 14400),
    ):
        x, y = split
        assert len(x) == end - start - length - horizon + 1
        assert torch.allclose(data.inverse_transform(x[0]), raw[start : start + length], atol=1e-3)
        assert torch.allclose(data.inverse_transform(y[-1]), raw[end - horizon : end], atol=1e-3)
    # Scaled training rows have mean 0 and standard deviation 1 per column; later rows need not.
    train_rows = data.train_set[0][:, 0].reshape(-1, 7)
    assert torch.allclose(train_rows.mean(0), torch.zeros(7), atol=0.05)


@needs_ett
@pytest.mark.parametrize(("features", "inputs", "outputs"), [("M", 7, 7), ("S", 1, 1), ("MS", 7, 1)])
def test_feature_modes_put_the_target_last(features: str, inputs: int, outputs: int) -> None:
    data = ett(input_length=24, horizon=12, features=features)
    assert data.spec.input_shape == (24, inputs) and data.spec.output_shape == (12, outputs)
    x, y = data.test_set
    assert x.shape[1:] == (24, inputs) and y.shape[1:] == (12, outputs)
    ot = data.inverse_transform(y[0][:, -1:])
    assert torch.allclose(ot[:, 0], raw_ett()[11520 : 11520 + 12, -1].float(), atol=1e-3)


def test_missing_file_offline_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"ett/ETTh1\.csv does not exist; put ETTh1\.csv there"):
        ETTDataModule(data_dir=str(tmp_path / "ett"), download=False)


def test_failed_download_leaves_nothing_and_says_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ett_module, "ETT_URL", f"file://{tmp_path}/nowhere/{{name}}.csv")
    data = ETTDataModule(name="ETTh2", data_dir=str(tmp_path / "ett"), download=True)
    with pytest.raises(UserError, match=r"downloading it .* failed .*put ETTh2\.csv into"):
        data.setup()
    assert list((tmp_path / "ett").iterdir()) == []


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("date,HUFL,HULL,MUFL,MULL,LUFL,OT", "2016-07-01 00:00:00,1,2,3,4,5,6", r"missing columns \['LULL'\]"),
        (
            "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT,X",
            "2016-07-01 00:00:00,1,2,3,4,5,6,7,8",
            r"unexpected columns \['X'\]",
        ),
        (
            "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT",
            "2016-07-01 00:00:00,1,2,3,oops,5,6,7",
            r"line 3: 'oops' is not a number",
        ),
    ],
)
def test_bad_csv_is_a_clear_user_error(tmp_path: Path, header: str, row: str, message: str) -> None:
    good = "2016-07-01 00:00:00" + ",1.5" * (header.count(",") or 1)
    (tmp_path / "ETTh1.csv").write_text(f"{header}\n{good}\n{row}\n")
    with pytest.raises(UserError, match=message):
        ETTDataModule(data_dir=str(tmp_path), download=False).setup()


HEADER = b"date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT\n"
GOOD = b"2016-07-01 00:00:00,1,2,3,4,5,6,7\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (HEADER + GOOD + b"2016-07-01 01:00:00,1,2,3,4,5,6,7\xe9\n", r"line 3 is not UTF-8 text \(byte 0xe9\)"),
        (HEADER + GOOD + b"2016-07-01 01:00:00,1,2,3,\x00,5,6,7\n", r"line 3: '\\x00' is not a number"),
        (HEADER + GOOD + b"2016-07-01 01:00:00,1,2,nan,4,5,6,7\n", r"line 3: a value is not finite"),
        (HEADER + GOOD + b"2016-07-01 01:00:00,1,2,,4,5,6,7\n", r"line 3: '' is not a number"),
        (HEADER + GOOD + b"2016-07-01 01:00:00,1,2\n", r"line 3: 3 fields, expected 8"),
        (HEADER + GOOD + b"\n" + b"2016-07-01 01:00:00,1,2,3,4,inf,6,7\n", r"line 4: a value is not finite"),
        (HEADER, r"has no data rows"),
        (b"", r"missing columns"),
        (bytes(range(256)) * 4, r"line 2 is not UTF-8 text \(byte 0x80\)"),
    ],
    ids=["latin-1", "nul-byte", "nan", "empty-value", "truncated-row", "blank-line", "header-only", "empty", "binary"],
)
def test_a_damaged_ett_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "ETTh1.csv").write_bytes(content)
    with pytest.raises(UserError, match=message) as refused:
        ETTDataModule(data_dir=str(tmp_path), download=False).setup()
    assert str(tmp_path / "ETTh1.csv") in str(refused.value) and "\n" not in str(refused.value)


def test_an_ett_file_with_a_byte_order_mark_and_a_last_blank_line_is_read(tmp_path: Path) -> None:
    from experiments.data.ett import ETT_COLUMNS, read_csv_columns

    (tmp_path / "ETTh1.csv").write_bytes(b"\xef\xbb\xbf" + HEADER + GOOD + b"\r\n\n")
    values = read_csv_columns(tmp_path / "ETTh1.csv", ETT_COLUMNS)
    assert values.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]


def test_sine_series_is_reproducible_from_its_seed() -> None:
    assert torch.equal(SineDataModule(seed=1).load_series(), SineDataModule(seed=2).load_series())
    first, again, other = (SineDataModule(num_rows=500, series_seed=s).load_series() for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    data = SineDataModule(num_rows=1000, input_length=40, horizon=10, stride=5, split=(0.6, 0.2))
    data.setup()
    assert len(data.train_set[0]) == (600 - 50) // 5 + 1  # stride spaces the training windows only
    assert len(data.val_set[0]) == 200 - 10 + 1 and len(data.test_set[0]) == 200 - 10 + 1
    with pytest.raises(UserError, match="fewer than input_length \\+ horizon"):
        SineDataModule(num_rows=100, input_length=40, horizon=20).setup()


def test_loader_starts_a_new_epoch_when_lightning_stops_at_len() -> None:
    """Lightning takes exactly len() batches and never asks for one more."""
    x = torch.arange(10.0)
    train_loader = InMemoryLoader(x, batch_size=4, shuffle=True, seed=1)
    epochs = [torch.cat([b[0] for b in itertools.islice(iter(train_loader), len(train_loader))]) for _ in range(3)]
    assert all(sorted(e.tolist()) == x.tolist() for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    # a loader restored from that state goes on with the next epoch, not the one just finished
    restored = InMemoryLoader(x, batch_size=4, shuffle=True, seed=1)
    restored.load_state_dict(train_loader.state_dict())
    assert torch.equal(torch.cat([b[0] for b in restored]), torch.cat([b[0] for b in train_loader]))
    eval_loader = InMemoryLoader(x, batch_size=4)
    list(itertools.islice(iter(eval_loader), 2))  # the sanity check's two batches
    assert [len(b[0]) for b in eval_loader] == [4, 4, 2]  # every window, the partial batch kept


@pytest.mark.parametrize("model", [LSTM, MLP, CNN])
@pytest.mark.parametrize(("inputs", "outputs"), [(3, 3), (3, 1)])
def test_revin_makes_forecasts_follow_the_level_and_scale_of_each_window(model, inputs: int, outputs: int) -> None:
    torch.manual_seed(0)
    options = {"patch_len": 4} if model is LSTM else {}
    core_input, core_output = Windowed.core_shapes((16, inputs), (8, outputs), True, **options)
    net = Windowed(
        model(core_input, core_output), (16, inputs), (8, outputs), revin=True, channel_independent=True, **options
    ).eval()
    x = torch.randn(5, 16, inputs)
    y = net(x)
    assert y.shape == (5, 8, outputs)
    moved = net(3.0 * x + 10.0)
    assert torch.allclose(moved, 3.0 * y + 10.0, atol=1e-3)
    # Channel independence: a channel's forecast depends on that channel's inputs only.
    x2 = x.clone()
    x2[..., 0] += 1.0
    assert torch.allclose(net(x2)[..., -1], y[..., -1])


def test_window_options_are_for_windows_only(compose_train) -> None:
    data, task = build(compose_train("data=mnist", "model=lstm"))
    assert type(task.model) is LSTM  # all window options off: the model as it is
    with pytest.raises(UserError, match=r"^window: window options need \(L, C\) windows .*leave window.revin"):
        build(compose_train("data=mnist", "window.revin=true"))
    with pytest.raises(
        UserError, match=r"^window.patch_len=5 is not valid: patch_len must be a positive divisor of the 96"
    ):
        build(compose_train("data=sine", "window.patch_len=5"))


def test_forecasting_losses_and_their_check() -> None:
    model = MLP((8, 2), (4, 2), hidden=[])
    x, y = torch.randn(6, 8, 2), torch.randn(6, 4, 2)
    for name, expected in (("mse", torch.nn.functional.mse_loss), ("mae", torch.nn.functional.l1_loss)):
        task = ForecastingTask(model, (8, 2), (4, 2), loss=name)
        assert torch.allclose(task.loss(model(x), y), expected(model(x), y))
    with pytest.raises(ValueError, match="unknown loss 'l3'; choose one of: mse, mae, huber"):
        ForecastingTask(model, (8, 2), (4, 2), loss="l3")


def test_sine_lstm_beats_the_naive_baseline_and_leaves_its_files(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(
        "experiment=sine_lstm",
        "data.num_rows=1500",
        "data.input_length=48",
        "data.horizon=24",
        "trainer.max_epochs=6",
        "model.hidden_size=32",
        "window.patch_len=6",
        "data.batch_size=16",
        "optimizer.lr=0.01",
    )
    metrics = train(cfg)
    test = metrics["test"]
    assert test["test/mse"] * 10 <= test["test/naive_mse"]
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "history.csv", "learning_curves.png", "forecasts.png", "checkpoints"):
        assert (run / name).exists(), name
    events = list(run.rglob("events.out.tfevents.*"))
    assert any(b"test/forecasts" in e.read_bytes() for e in events)
    header = (run / "history.csv").read_text().splitlines()[0]
    assert "val/naive_mse" in header and "val/mae" in header


@needs_ett
@pytest.mark.parametrize("horizon", [192, 336, 720])
def test_etth1_lstm_takes_every_standard_horizon(compose_train, horizon: int) -> None:
    cfg = compose_train("experiment=etth1_lstm", f"data.horizon={horizon}", f"data.data_dir={ETT_DIR}")
    data, task = build(cfg)
    assert data.spec.output_shape == (horizon, 7)
    assert task(torch.zeros(2, 336, 7)).shape == (2, horizon, 7)


@needs_ett
def test_etth1_short_run_tests_the_full_test_set(compose_train) -> None:
    cfg = compose_train(
        "experiment=etth1_mlp",
        f"data.data_dir={ETT_DIR}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=5",
        "+trainer.limit_val_batches=2",
    )
    test = train(cfg)["test"]
    assert test["test/naive_mse"] == pytest.approx(1.294, abs=0.002)
    assert test["test/mse"] < test["test/naive_mse"]


def test_cli_without_the_ett_file_is_one_line(tmp_path: Path) -> None:
    # In this process, exactly as the console script runs it (run_cli around the Hydra main).
    code, _, err = call_cli(
        "train",
        "experiment=etth1_lstm",
        f"data.data_dir={tmp_path}/nothing",
        "data.download=false",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: data: {tmp_path}/nothing/ETTh1.csv does not exist; put ETTh1.csv there (from "
        "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv) or set data.download=true"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@needs_ett
def test_etth1_lstm_reaches_the_bar_on_the_full_protocol(compose_train, tmp_path: Path) -> None:
    metrics = train(compose_train("experiment=etth1_lstm", f"data.data_dir={ETT_DIR}", "data.download=false"))
    test = metrics["test"]
    assert test["test/mse"] <= 0.40 and test["test/mae"] <= 0.42
    assert test["test/naive_mse"] == pytest.approx(1.294, abs=0.002)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test"] == test
