"""Where configs and data come from: a clone's conf/ and data/, or an installed package's copy and cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import config
from experiments.data.idx import MNIST_FILES, IDXDataModule
from experiments.errors import UserError

from conftest import REPO, compose_config


def test_a_clone_reads_its_own_conf_and_shipped_mnist_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXPERIMENTS_DATA", raising=False)
    assert config.IN_CLONE and Path(config.CONFIG_DIR) == REPO / "conf"
    assert not (REPO / "src" / "experiments" / "conf").exists()  # conf/ has one copy in git
    cfg = compose_config("train", ["experiment=mnist_mlp"], tmp_path)
    assert cfg.data.data_dir == str(REPO / "data" / "mnist")
    assert cfg.data.download is False  # the clone never reaches for the network


def test_experiments_data_and_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERIMENTS_DATA", str(tmp_path / "shared"))
    assert config.data_root() == tmp_path / "shared"
    assert compose_config("train", ["experiment=mnist_mlp"], tmp_path).data.data_dir == str(
        tmp_path / "shared" / "mnist"
    )
    # As installed from the wheel: the user cache, and MNIST fetched into it when missing.
    monkeypatch.delenv("EXPERIMENTS_DATA")
    monkeypatch.setattr(config.paths, "IN_CLONE", False)  # where data_root() reads it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = compose_config("train", ["experiment=mnist_mlp"], tmp_path)
    assert cfg.data.data_dir == str(tmp_path / "cache" / "experiments" / "mnist")
    assert cfg.data.download is True


def test_offline_mnist_download_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A mirror that refuses at once stands in for a machine without a network (no real network needed).
    data_dir = tmp_path / "cache" / "experiments" / "mnist"
    with pytest.raises(UserError) as raised:
        IDXDataModule(data_dir=str(data_dir), download=True, mirrors=["http://127.0.0.1:9/"]).setup()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"MNIST is not in {data_dir} and could not be downloaded (offline? ")
    assert message.endswith(
        f"put the four MNIST .gz files ({', '.join(MNIST_FILES.values())}) there, or point "
        "EXPERIMENTS_DATA (holding mnist/) or data.data_dir at a folder that holds them"
    )
    assert list(data_dir.iterdir()) == []  # no partial file left behind
