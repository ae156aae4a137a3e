"""A checkpoint crafted to run code when unpickled is refused, and its code never runs: through
evaluate, predict, and training resumed with ckpt_path= or resume=."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from reliability_helpers import call_cli, completed_results, run


class _Payload:
    """Unpickling this calls os.system, which leaves a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _craft(path: Path, marker: Path, like: Path) -> None:
    """A Lightning checkpoint like ``like`` whose state_dict also holds the payload."""
    checkpoint = torch.load(like, weights_only=True)
    checkpoint["state_dict"]["model.payload"] = _Payload(marker)
    torch.save(checkpoint, path)


@pytest.fixture
def malicious(xor_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run whose best.ckpt and last.ckpt carry the payload, and the marker's path."""
    run_dir = tmp_path / "downloaded"
    shutil.copytree(xor_run, run_dir)
    marker = tmp_path / "payload-ran"
    for name in ("best.ckpt", "last.ckpt"):
        _craft(run_dir / "checkpoints" / name, marker, xor_run / "checkpoints" / name)
    return run_dir, marker


def test_the_payload_runs_when_unpickled_unsafely(malicious: tuple[Path, Path]) -> None:
    """The control: the crafted file really does run code under a plain torch.load."""
    run_dir, marker = malicious
    torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("evaluate", ["ckpt_path={run}/checkpoints/best.ckpt"]),
        ("predict", ["ckpt_path={run}/checkpoints/best.ckpt"]),
        ("train", ["experiment=xor", "ckpt_path={run}/checkpoints/last.ckpt", "hydra.run.dir={tmp}/new"]),
        # trained on (a completed run started again with its own overrides has nothing to load)
        ("train", ["experiment=xor", "trainer.max_epochs=3", "resume={run}", "resume_with_changes=true"]),
    ],
    ids=["evaluate", "predict", "train-ckpt_path", "train-resume"],
)
def test_malicious_checkpoint_is_refused_and_never_runs(
    module: str, args: list[str], malicious: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, marker = malicious
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in args]
    code, _, stderr = call_cli(module, *argv)
    assert code != 0
    assert stderr.strip().startswith("error: cannot read checkpoint") and "safely" in stderr
    assert len(stderr.strip().splitlines()) == 1
    # and never the advice to load it unsafely that torch's own message ends with
    assert "weights_only" not in stderr and "False" not in stderr
    assert "pickled object (posix.system)" in stderr
    assert not marker.exists()
    assert not (tmp_path / "new").exists()
    assert not (run_dir / "predictions.csv").exists()


def test_malicious_checkpoint_refused_on_the_command_line(malicious: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, marker = malicious
    result = run(
        "train", "experiment=xor", "trainer.max_epochs=3", f"resume={run_dir}", "resume_with_changes=true", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: cannot read checkpoint")
    assert not marker.exists()
    assert [p.parent for p in completed_results(tmp_path)] == [run_dir]  # the copied run, untouched
