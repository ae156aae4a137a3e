"""TensorBoard gets the curves and the hyper-parameters with their real final metrics."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments.train import train

from conftest import compose_config


def _hparams_content(accumulator: EventAccumulator, tag: str) -> plugin_data_pb2.HParamsPluginData:
    data = plugin_data_pb2.HParamsPluginData()
    data.ParseFromString(accumulator.SummaryMetadata(tag).plugin_data.content)
    return data


def test_event_files_hold_curves_hparams_and_metrics(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=xor", "trainer.max_epochs=20"], tmp_path / "run")
    metrics = train(cfg)

    accumulator = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {"train/loss", "val/loss", "val/acc", "test/acc", "test/loss"} <= set(scalars)
    assert len(accumulator.Scalars("train/loss")) == 20
    assert "hp_metric" not in scalars

    hparams_tags = accumulator.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams_tags)
    session = _hparams_content(accumulator, "_hparams_/session_start_info").session_start_info
    assert session.hparams["optimizer.lr"].number_value == 0.05
    assert session.hparams["model.hidden"].string_value == "[8]"
    assert session.hparams["trainer.max_epochs"].number_value == 20
    experiment = _hparams_content(accumulator, "_hparams_/experiment").experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"best/val_loss", "test/acc", "test/loss"} <= metric_tags
    # the metric values the HPARAMS tab shows are the run's real results
    [best] = accumulator.Scalars("best/val_loss")
    assert abs(best.value - metrics["best"]) < 1e-6
    assert accumulator.Scalars("test/acc")[-1].value == metrics["test"]["test/acc"]
