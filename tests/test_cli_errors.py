"""Mistakes on the command line cost one clear line, a non-zero exit and no result-looking folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli

CASES = {
    "unknown experiment": (["experiment=nope"], ["unknown experiment 'nope'", "neuron", "xor"]),
    "unknown model": (["model=transformer"], ["unknown model 'transformer'", "mlp"]),
    "unknown data": (["data=cifar"], ["unknown data 'cifar'", "xor"]),
    "misspelt key": (["trainer.max_epoch=3"], ["unknown key 'trainer.max_epoch'", "trainer.max_epochs"]),
    "wrong type": (["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "expected int"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_train_input_is_one_clear_line(case: str, tmp_path: Path) -> None:
    overrides, expected = CASES[case]
    result = run_cli("train", *overrides, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in expected:
        assert fragment in lines[0]
    # nothing that looks like a result: no run folder at all for a run that never started
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("metrics.json"))


@pytest.mark.parametrize("module", ["evaluate", "predict"])
def test_missing_checkpoint_is_one_clear_line(module: str, tmp_path: Path) -> None:
    result = run_cli(module, f"ckpt_path={tmp_path / 'missing.ckpt'}", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: checkpoint not found: {tmp_path / 'missing.ckpt'}; "
        "pass ckpt_path=<run dir>/checkpoints/best.ckpt of a finished run"
    ]
    assert list(tmp_path.iterdir()) == []
