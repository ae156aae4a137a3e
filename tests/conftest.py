"""Shared fixtures: configs composed with Hydra's compose API, and the CLI run as a user runs it."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.config import CONFIG_DIR, PROJECT_ROOT

REPO = PROJECT_ROOT
MNIST_DIR = REPO / "data" / "mnist"
SHARED_DATA = REPO.parent / "shared" / "data"


def registered(group: str) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``): what tests iterate over, never a list kept by hand."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml") if p.stem != "default")


@functools.cache
def group_option(group: str, option: str) -> dict:
    """``conf/<group>/<option>.yaml`` as Hydra composes it (its own defaults list included), as a dict."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"])
    return OmegaConf.to_container(cfg[group])  # type: ignore[return-value]


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the CLI would, with the run directory set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_train("experiment=xor", ...)``: a train config whose run directory is ``tmp_path/run``."""

    def _compose(*overrides: str) -> DictConfig:
        return compose_config("train", list(overrides), tmp_path / "run")

    return _compose


def _cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # This checkout's sources first, whatever the cwd (a relative PYTHONPATH=src would not hold there).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def run_cli(module: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m experiments.<module> args...`` in ``cwd`` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        cwd=cwd,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class StartedCli:
    """``run_cli`` started without waiting, so that a test can do other work meanwhile (another
    core). Its output goes to files: no full pipe holds it up while the test is busy."""

    def __init__(self, module: str, *args: str, cwd: Path) -> None:
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"experiments.{module}", *args],
            cwd=cwd,
            env=_cli_env(),
            stdout=self.out,
            stderr=self.err,
            text=True,
        )
        self.result: subprocess.CompletedProcess[str] | None = None

    def wait(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """What ``run_cli`` would have returned; the process is killed if it outlives ``timeout``.
        Waiting again gives the same result."""
        if self.result is not None:
            return self.result
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.out.seek(0)
        self.err.seek(0)
        self.result = subprocess.CompletedProcess(
            self.process.args, self.process.returncode, self.out.read(), self.err.read()
        )
        self.out.close()
        self.err.close()
        return self.result


def selected(request: pytest.FixtureRequest, test_name: str) -> bool:
    """Whether this session runs the test ``test_name`` of the requesting module (a run that a fixture
    starts early for that test is not started when it was deselected)."""
    return any(item.module is request.module and item.originalname == test_name for item in request.session.items)


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch XOR run (one per test module), trained through the command line."""
    from reliability_helpers import call_cli

    run_dir = tmp_path_factory.mktemp("xor") / "run"
    code, _, err = call_cli(
        "train", "experiment=xor", "trainer.max_epochs=2", "logger=none", f"hydra.run.dir={run_dir}"
    )
    assert code == 0, err
    return run_dir


@pytest.fixture(scope="session")
def mnist_mlp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The primer's MNIST recipe (``experiment=mnist_mlp``, 5 epochs) trained once in this process,
    and its run folder: its accuracy (test_mnist) and its verdict (test_diagnosis) are both read
    from this one run, which neither test changes."""
    from experiments.train import train

    run_dir = tmp_path_factory.mktemp("mnist_mlp") / "run"
    cfg = compose_config("train", ["experiment=mnist_mlp", "logger=none", "callbacks.history.verbose=false"], run_dir)
    return train(cfg), run_dir
