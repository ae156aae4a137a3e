"""A user's own model, data, task, callback, experiment and search space, from a config folder of
their own (examples/own_parts), with every check that our own parts get."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from experiments import load_run, run
from experiments.config import CONFIG_DIR, build, check_config
from experiments.errors import UserError, describe

from conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "own_parts"
MY_CONF = EXAMPLE / "my_conf"


@pytest.fixture
def own_parts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The example's package importable (as PYTHONPATH or pip install would make it), cwd a temp folder."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m == "my_parts" or m.startswith("my_parts.")]:
        del sys.modules[name]


def _compose(*overrides: str, config_dir: Path = MY_CONF, output_dir: Path | None = None):
    """Compose as the CLI does with hydra.searchpath, the other standard way to add a config folder."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"hydra.searchpath=[file://{config_dir}]", *overrides], return_hydra_config=True
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or Path.cwd() / "run")
        sweeper = cfg.hydra.sweeper
        del cfg.hydra
    return cfg, sweeper


def test_own_data_model_task_and_callback_train_through_the_api(own_parts: Path) -> None:
    metrics = run("experiment=circles", "task=focal", "callbacks=stop_at_target", config_dir=MY_CONF)
    assert metrics["status"] == "completed"
    assert metrics["test"]["test/acc"] >= 0.95
    assert metrics["epochs"] < 60  # StopAtTarget ended it once val/acc reached 0.99
    loaded = load_run(metrics.run_dir, trust=["my_parts"])
    assert type(loaded.model).__name__ == "GatedMLP" and type(loaded.task).__name__ == "FocalTask"
    assert loaded.task.gamma == 2.0
    assert loaded.config.data._target_ == "my_parts.data.CirclesDataModule"
    assert (loaded.predict()["prediction"] == loaded.datamodule.test_set[1]).float().mean().item() == metrics["test"][
        "test/acc"
    ]


def test_own_model_on_our_experiment_through_the_cli(own_parts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config-dir from the CLI, the user's package found on PYTHONPATH; our xor preset's model
    settings (hidden, activation) apply to the user's model, which takes them."""
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE))
    result = run_cli(
        "train", "--config-dir", str(MY_CONF), "experiment=xor", "model=gated_mlp", "logger=none", cwd=own_parts
    )
    assert result.returncode == 0, result.stderr
    assert "xor: test/acc=1.0000" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.hiden=[8]"], r"^unknown key 'model.hiden' \(did you mean 'model.hidden'\?\)"),
        (
            ["+model.hiden=[8]"],
            r"^model.hiden is not an option of my_parts.models.GatedMLP \(did you mean 'hidden'\?\); valid options: hidden, activation$",
        ),
        (
            ["model.activation=sigmoid"],
            r"^model.activation='sigmoid' is not one of: 'tanh', 'relu', 'gelu'$",
        ),
        (["model.hidden=[0]"], r"^model.hidden=\[0\] is not valid for GatedMLP: hidden must list positive layer sizes"),
        (["data.factor=2"], r"^data: factor must be between 0 and 1, got 2"),
        (["data.n=many"], r"^data.n='many' has the wrong type: expected int$"),
        (
            ["task=focal", "+task.gama=1"],
            r"^task.gama is not an option of my_parts.tasks.FocalTask \(did you mean 'gamma'\?\); valid options: gamma$",
        ),
        (["task=focal", "task.gamma=-1"], r"^task my_parts.tasks.FocalTask: gamma must be >= 0, got -1$"),
        (["task=focul"], r"^unknown task 'focul' \(did you mean 'focal'\?\); choose one of: auto, focal$"),
        (
            ["callbacks=stop_at_target", "callbacks.stop_at_target.targt=1"],
            r"^unknown key 'callbacks.stop_at_target.targt'",
        ),
        (
            ["callbacks=stop_at_target", "callbacks.stop_at_target.target=high"],
            r"^callbacks.stop_at_target.target='high' has the wrong type: expected float$",
        ),
        (
            ["model._target_=my_parts.models.Nope"],
            r"^model._target_: cannot import 'my_parts.models.Nope'; check the name, and that its package is installed or on PYTHONPATH$",
        ),
    ],
)
def test_own_parts_get_every_check_in_one_line(own_parts: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(Exception) as raised:
        cfg, _ = _compose("experiment=circles", *overrides)
        check_config(cfg)
        build(cfg)
    assert describe(raised.value) is not None, raised.value
    assert re.search(message, describe(raised.value)), describe(raised.value)


def test_a_model_must_take_the_data_shapes_and_data_must_declare_a_spec(own_parts: Path) -> None:
    conf = own_parts / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "data").mkdir()
    (own_parts / "bad_parts.py").write_text(
        "import lightning as L\nfrom torch import nn\n"
        "class NoShapes(nn.Module):\n    def __init__(self, width: int = 4):\n        super().__init__()\n"
        "class NoSpec(L.LightningDataModule):\n    def __init__(self, size: int = 4):\n        super().__init__()\n"
    )
    (conf / "model" / "no_shapes.yaml").write_text("_target_: bad_parts.NoShapes\nwidth: 4\n")
    (conf / "data" / "no_spec.yaml").write_text("_target_: bad_parts.NoSpec\nsize: 4\n")
    sys.path.insert(0, str(own_parts))
    try:
        cfg, _ = _compose("experiment=xor", "model=no_shapes", config_dir=conf)
        with pytest.raises(UserError, match=r"^model bad_parts.NoShapes does not take input_shape and output_shape; "):
            check_config(cfg)
        cfg, _ = _compose("experiment=xor", "data=no_spec", config_dir=conf)
        check_config(cfg)
        with pytest.raises(UserError, match=r"^data bad_parts.NoSpec has no spec \(a DataSpec"):
            build(cfg)
    finally:
        sys.path.remove(str(own_parts))
        sys.modules.pop("bad_parts", None)


def test_own_experiment_and_search_space_compose_with_hydra_searchpath(own_parts: Path) -> None:
    cfg, sweeper = _compose("experiment=circles", "hparams_search=circles_tpe")
    assert cfg.name == "circles" and cfg.trainer.max_epochs == 30
    assert cfg.model._target_ == "my_parts.models.GatedMLP"
    assert sweeper.study_name == "circles_tpe"
    assert set(sweeper.params) == {"optimizer.lr", "model.hidden", "model.activation"}
    check_config(cfg)
