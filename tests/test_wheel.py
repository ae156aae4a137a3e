"""The wheel as a user installs it: built from this checkout, installed into a fresh virtual
environment, and run from an empty folder, with a model of the user's own through --config-dir.

The fresh environment gets only the wheel; torch, Lightning and Hydra come from the test
environment through a .pth file (lines of a .pth file are plain paths: the editable install's own
.pth files there are not read, so ``experiments`` can only come from the wheel).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

# What a build needs from a checkout; everything else (data, outputs, .venv, tests) stays behind.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "conf")

TINY_MODEL = '''
import math
from torch import nn


class Tiny(nn.Module):
    """A user's own model: one hidden layer, its options named unlike any shipped model's
    (experiment=xor chooses a model variant; it sets none of the model's keys)."""

    def __init__(self, input_shape, output_shape, width: int = 8, squash: bool = True):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh() if squash else nn.ReLU(),
            nn.Linear(width, math.prod(output_shape)),
        )

    def forward(self, x):
        return self.net(x).view(len(x), *self.output_shape)
'''


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _run_together(
    *runs: tuple[list[str], Path, dict[str, str]], timeout: float = 300
) -> list[subprocess.CompletedProcess[str]]:
    """``_run`` for independent commands, all at once (a machine's cores, not one after the other).
    Their output goes to files, so that no full pipe holds one up while another is waited for."""
    started = []
    for argv, cwd, env in runs:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        started.append((subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True), out, err))
    done = []
    try:
        for process, out, err in started:
            process.wait(timeout=timeout)
            out.seek(0)
            err.seek(0)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read()))
    finally:
        for process, out, err in started:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment with only the wheel of this checkout installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
        root,
        dict(os.environ),
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (root / "dist").glob("lightning_hydra_experiments-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("experiments/conf/") for n in names if n.startswith("experiments/conf/"))
    in_git = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    assert shipped == in_git  # every config, and nothing else
    assert not [n for n in names if "mnist" in n and n.endswith(".gz")]  # MNIST is fetched, not shipped

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, dict(os.environ)
        ).stdout.strip()
    )
    (site / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], root, dict(os.environ)
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The user's environment: nothing of this checkout on the path, caches in a temporary folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR", "EXPERIMENTS_DATA")}
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", **extra}


def _metrics(folder: Path, name: str) -> dict:
    [run_dir] = (folder / "outputs" / name / "runs").iterdir()
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def used(
    installed: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """What a user does with the installed wheel, all at once (independent processes, in folders of
    their own): where it finds its configs and data, experiment=xor from an empty folder, and a
    model of the user's own through --config-dir, rightly spelt and misspelt (that one starts no run)."""
    root = tmp_path_factory.mktemp("used")
    empty = root / "empty"
    empty.mkdir()
    folder = root / "project"
    (folder / "my_conf" / "model").mkdir(parents=True)
    (folder / "my_code").mkdir()
    (folder / "my_code" / "tiny_model.py").write_text(TINY_MODEL)
    (folder / "my_conf" / "model" / "tiny.yaml").write_text("_target_: tiny_model.Tiny\nwidth: 8\nsquash: true\n")
    plain, own = _env(root / "plain"), _env(root / "own", PYTHONPATH=str(folder / "my_code"))
    code = "import experiments.config as c; print(c.CONFIG_DIR); print(c.data_root())"
    tiny = [str(installed), "-m", "experiments.train", "--config-dir", "my_conf", "experiment=xor", "model=tiny"]
    runs = {
        "where": ([str(installed), "-c", code], empty, plain),
        "xor": ([str(installed), "-m", "experiments.train", "experiment=xor"], empty, plain),
        "tiny": (tiny, folder, own),
        "typo": ([*tiny, "+model.widht=4"], folder, own),
    }
    done = _run_together(*runs.values())
    return {name: (run[1], result) for (name, run), result in zip(runs.items(), done, strict=True)}


def test_the_installed_cli_trains_xor_from_an_empty_folder(installed: Path, used) -> None:
    empty, where = used["where"]
    config_dir, data_root = where.stdout.split()
    # The configs the wheel ships, and the user cache for data (MNIST is downloaded there when used).
    assert Path(config_dir).is_relative_to(installed.parents[1].resolve()) and Path(config_dir).name == "conf"
    assert data_root == str(empty.parent / "plain" / "cache" / "experiments")

    _, result = used["xor"]
    assert result.returncode == 0, result.stderr
    metrics = _metrics(empty, "xor")
    assert metrics["status"] == "completed" and metrics["test"]["test/acc"] == 1.0
    assert sorted(p.name for p in empty.iterdir()) == ["outputs"]  # run folders under ./outputs, nothing else


def test_the_installed_cli_trains_a_users_own_model_through_config_dir(used) -> None:
    folder, result = used["tiny"]
    assert result.returncode == 0, result.stderr
    metrics = _metrics(folder, "xor")
    assert metrics["status"] == "completed" and metrics["test"]["test/acc"] == 1.0
    [run_dir] = (folder / "outputs" / "xor" / "runs").iterdir()
    assert "_target_: tiny_model.Tiny" in (run_dir / "config.yaml").read_text()

    # The user's model gets our checks: a misspelt option is one line and exit code 2.
    _, typo = used["typo"]
    assert typo.returncode == 2
    assert typo.stderr.strip() == (
        "error: model.widht is not an option of tiny_model.Tiny (did you mean 'width'?); valid options: width, squash"
    )
