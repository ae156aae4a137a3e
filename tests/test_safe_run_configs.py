"""The config a checkpoint carries is data, not code: evaluate and predict rebuild a run only from this
project's classes and known library classes, and refuse any other ``_target_`` in one line before
anything is built (``torch.load`` with ``weights_only: false``, ``builtins.open``, ``os.system``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from experiments.checkpoints import checkpoint_config

from reliability_helpers import call_cli


class _Payload:
    """Unpickling this calls os.system, which leaves a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _crafted_run(xor_run: Path, folder: Path, key: str, node: object) -> Path:
    """A copy of the run whose best checkpoint carries a config that sets ``key`` (dotted) to ``node``."""
    shutil.copytree(xor_run, folder)
    ckpt = folder / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    *parents, last = key.split(".")
    where = checkpoint["config"]
    for name in parents:
        where = where[name]
    where[last] = node
    torch.save(checkpoint, ckpt)
    return folder


def _payloads(tmp_path: Path) -> dict[str, tuple[str, dict[str, object], Path, str]]:
    """name -> (key, node, the file the payload would touch, what it must still hold)."""
    pickle_file, marker = tmp_path / "payload.pt", tmp_path / "payload-ran"
    torch.save(_Payload(marker), pickle_file)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    return {
        "torch.load": (
            "model.activation",
            {"_target_": "torch.load", "f": str(pickle_file), "weights_only": False},
            marker,
            "",
        ),
        "builtins.open": (
            "data",
            {"_target_": "builtins.open", "file": str(precious), "mode": "w"},
            precious,
            "keep me\n",
        ),
        "os.system": ("optimizer", {"_target_": "os.system", "command": f"touch {marker}"}, marker, ""),
        "a project function": (
            "trainer.profiler",
            {"_target_": "experiments.runs.write_json", "path": str(precious), "data": {}},
            precious,
            "keep me\n",
        ),
    }


def _untouched(path: Path, content: str) -> bool:
    return path.read_text() == content if content else not path.exists()


def test_the_payloads_do_run_when_instantiated(tmp_path: Path) -> None:
    """The control: Hydra's instantiate really runs each payload."""
    for key, node, touched, content in _payloads(tmp_path).values():
        if node["_target_"] == "experiments.runs.write_json":
            node = {**node, "path": Path(str(node["path"]))}
        try:
            instantiate(node)
        except Exception:  # noqa: BLE001 - torch.load's payload runs before it fails
            pass
        assert not _untouched(touched, content), key


@pytest.mark.parametrize("payload", ["torch.load", "builtins.open", "os.system", "a project function"])
@pytest.mark.parametrize("module", ["evaluate", "predict"])
def test_a_run_config_that_names_other_code_is_refused(
    payload: str, module: str, xor_run: Path, tmp_path: Path
) -> None:
    key, node, touched, content = _payloads(tmp_path)[payload]
    run_dir = _crafted_run(xor_run, tmp_path / "shared-run", key, node)
    code, out, err = call_cli(module, f"ckpt_path={run_dir}/checkpoints/best.ckpt")
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and f"{key}._target_ = '{node['_target_']}' is not allowed" in lines[0]
    assert _untouched(touched, content)
    assert not (run_dir / "predictions.csv").exists()


def test_a_target_is_checked_at_any_depth_and_in_lists(xor_run: Path, tmp_path: Path) -> None:
    run_dir = _crafted_run(
        xor_run, tmp_path / "run", "model.hidden", [8, {"_target_": "subprocess.run", "args": ["true"]}]
    )
    with pytest.raises(Exception, match=r"model\.hidden\[1\]\._target_ = 'subprocess.run' is not allowed"):
        checkpoint_config(run_dir / "checkpoints" / "best.ckpt")


def test_an_honest_run_config_still_evaluates(xor_run: Path) -> None:
    code, out, err = call_cli("evaluate", f"ckpt_path={xor_run}/checkpoints/best.ckpt")
    assert code == 0, err
    assert "test/acc=" in out


def test_a_class_of_the_users_own_package_is_built_only_when_trusted(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from experiments.checkpoints import check_targets
    from experiments.errors import UserError

    cfg = OmegaConf.create({"model": {"_target_": "collections.OrderedDict"}})
    with pytest.raises(UserError, match=r"pass trust=\[collections\]"):
        check_targets(cfg, "config.yaml")
    check_targets(cfg, "config.yaml", trust=["collections"])
    with pytest.raises(UserError):  # a trusted package lets its classes through, not functions
        check_targets(
            OmegaConf.create({"x": {"_target_": "collections.namedtuple"}}), "config.yaml", trust=["collections"]
        )


def test_a_checkpoint_carries_its_config_and_works_moved_anywhere(xor_run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "x" / "best.ckpt"
    moved.parent.mkdir()
    shutil.copy(xor_run / "checkpoints" / "best.ckpt", moved)
    assert torch.load(moved, weights_only=True)["config"]["model"]["hidden"] == [8]  # plain containers
    code, out, err = call_cli("evaluate", f"ckpt_path={moved}")
    assert code == 0, err
    assert out.strip().splitlines()[-1].endswith(f"| {moved}") and "test/acc=" in out
    code, out, err = call_cli("predict", f"ckpt_path={moved}")
    assert code == 0, err
    rows = (moved.parent / "predictions.csv").read_text().splitlines()  # beside the moved file
    assert rows[0] == "input_0,input_1,target,probability,prediction" and len(rows) == 1 + 4
    # A checkpoint from before checkpoints carried their config: refused in one line (see
    # test_bad_input), or rebuilt from its run's config.yaml when that is passed.
    old = tmp_path / "old.ckpt"
    torch.save({k: v for k, v in torch.load(moved, weights_only=True).items() if k != "config"}, old)
    code, out, err = call_cli("evaluate", f"ckpt_path={old}", f"config={xor_run}/config.yaml")
    assert code == 0, err
