"""The config a checkpoint carries is data, not code: evaluate, predict and load_run rebuild a run
only from the classes registered for each place (or of a trusted package), with plain options,
after refusing any interpolation; nothing in it can write, fetch or run anything, through any
class, attribute path, resolver or option (issue 23, class 1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from experiments.errors import UserError
from experiments.restore import restore
from experiments.stored import TRAINER_OPTIONS, rebuild_config, stored_config, trusted_packages

from reliability_helpers import call_cli, child_env

# The stored config of an XOR run, as its checkpoint carries it (the parts a rebuild reads).
_XOR = {
    "seed": 0,
    "monitor": "val/loss",
    "data": {"_target_": "experiments.data.XORDataModule", "batch_size": 4},
    "model": {"_target_": "experiments.models.MLP", "hidden": [8], "activation": "tanh"},
    "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001},
    "scheduler": None,
    "task": {},
    "trainer": {"_target_": "experiments.engine.Trainer", "precision": "32-true", "accelerator": "cpu"},
}


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
            "task",
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
    with pytest.raises(UserError, match=r"model\.hidden\[1\]\._target_ = 'subprocess.run' is not allowed"):
        restore(run_dir / "checkpoints" / "best.ckpt")


def test_an_honest_run_config_still_evaluates(xor_run: Path) -> None:
    code, out, err = call_cli("evaluate", f"ckpt_path={xor_run}/checkpoints/best.ckpt")
    assert code == 0, err
    assert "test/acc=" in out


def test_a_class_of_the_users_own_package_is_built_only_when_trusted(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text(
        "import logging\n\nclass Model:\n    pass\n"  # imports logging: logging.FileHandler is reachable
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    stored = stored_config({**_XOR, "model": {"_target_": "my_pkg.Model"}}, "config.yaml")
    with pytest.raises(UserError, match=r"pass trust=\[my_pkg\]"):
        rebuild_config(stored, "config.yaml", (), tmp_path)
    assert rebuild_config(stored, "config.yaml", trusted_packages("my_pkg"), tmp_path).model._target_ == "my_pkg.Model"
    # a trusted package lets its own classes through: not what it imports, not functions
    for target in ("my_pkg.logging.FileHandler", "my_pkg.logging.basicConfig"):
        walked = stored_config({**_XOR, "model": {"_target_": target, "filename": str(tmp_path / "x")}}, "c")
        with pytest.raises(UserError, match="is not allowed"):
            rebuild_config(walked, "c", ["my_pkg"], tmp_path)
    with pytest.raises(UserError, match=r"trust=\['my pkg'\]: 'my pkg' is not a package name"):
        trusted_packages(["my pkg"])
    for library in ("logging", "torch", "experiments"):  # what a crafted config would ask for
        with pytest.raises(UserError, match=f"{library} is not a package of your own"):
            trusted_packages([library])
    with pytest.raises(UserError) as refused:
        rebuild_config(stored_config({**_XOR, "data": {"_target_": "logging.FileHandler"}}, "c"), "c", (), tmp_path)
    assert "trust=" not in str(refused.value)  # never the advice to trust a library


def test_a_stored_config_that_is_not_a_small_tree_is_refused(xor_run: Path, tmp_path: Path) -> None:
    shared: list[object] = [1]
    for _ in range(30):  # 2**30 values in a few bytes of pickle (shared references)
        shared = [shared, shared]
    loop: list[object] = []
    loop.append(loop)
    for value in (shared, loop):
        with pytest.raises(UserError, match="it is not a run's config"):
            stored_config({**_XOR, "model": {"hidden": value}}, "c")
    aliases = tmp_path / "config.yaml"
    aliases.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n")
    code, _, err = call_cli("evaluate", f"ckpt_path={xor_run}/checkpoints/best.ckpt", f"config={aliases}")
    assert (
        code == 2
        and err.strip() == f"error: cannot read {aliases}: it uses YAML aliases (*name), which a run never writes"
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


# Hostile stored configs (issue 23, class 1): each is refused by the one restore that evaluate,
# predict and load_run share, before anything is built or resolved; the victim keeps its bytes
# and the listener gets no connection. (key, value); VICTIM, MARKER and LISTENER are filled in.
_WALKS = {  # classes reached by walking module attributes from a name that looks allowed
    "FileHandler via experiments.errors": "experiments.errors.logging.FileHandler",
    "FileIO via experiments.errors": "experiments.errors.logging.io.FileIO",
    "WatchedFileHandler": "experiments.errors.logging.handlers.WatchedFileHandler",
    "GzipFile via experiments.data.idx": "experiments.data.idx.gzip.GzipFile",
    "ZipFile via torch.hub": "experiments.checkpoints.torch.hub.zipfile.ZipFile",
    "FileIO via lightning callbacks": "lightning.pytorch.callbacks.early_stopping.logging.io.FileIO",
    "FileHandler via optuna.samplers": "optuna.samplers._cmaes.logging.logging.FileHandler",
    "FileHandler via torch.nn": "torch.nn.attention._registry.logging.FileHandler",
    "FileHandler via torch.optim": "torch.optim.swa_utils.torch._utils.logging.FileHandler",
    "TrainerFn (Trainer prefix)": "lightning.pytorch.trainer.trainer.TrainerFn",
}
_HOSTILE: dict[str, tuple[str, object]] = {
    **{
        f"{name} at model.activation": ("model.activation", {"_target_": t, "filename": "VICTIM", "mode": "w"})
        for name, t in _WALKS.items()
    },
    **{
        f"{name} as the data": ("data", {"_target_": t, "filename": "VICTIM", "mode": "w"})
        for name, t in _WALKS.items()
    },
    "FileHandler by _args_": (
        "model.activation",
        {"_target_": "experiments.errors.logging.FileHandler", "_args_": ["VICTIM", "w"]},
    ),
    "_args_ on an allowed class": ("data", {"_target_": "experiments.data.XORDataModule", "_args_": [4]}),
    "Popen via experiments.api": (
        "model.activation",
        {"_target_": "experiments.api.torch.ctypes.util.subprocess.Popen", "args": ["touch", "MARKER"]},
    ),
    "CDLL via experiments.checkpoints": (
        "model",
        {"_target_": "experiments.checkpoints.torch.ctypes.CDLL", "name": "x"},
    ),
    "SysLogHandler connects": (
        "model.activation",
        {"_target_": "experiments.errors.logging.handlers.SysLogHandler", "address": "LISTENER", "socktype": 1},
    ),
    "builtins.open as the optimizer": ("optimizer", {"_target_": "builtins.open", "file": "VICTIM", "mode": "w"}),
    "FileHandler as the optimizer node": (
        "optimizer",
        {"_target_": "experiments.errors.logging.FileHandler", "filename": "VICTIM", "mode": "w"},
    ),
    "a data module as the optimizer": ("optimizer", {"_target_": "experiments.data.XORDataModule", "_partial_": True}),
    "an optimizer that is not a factory": ("optimizer", {"_target_": "torch.optim.Adam", "lr": 0.1}),
    "a project function as the task": ("task", {"_target_": "experiments.runs.write_json", "path": "VICTIM"}),
    "a profiler as the trainer": ("trainer", {"_target_": "lightning.pytorch.profilers.SimpleProfiler"}),
    "a target inside a data option": ("data.batch_size", {"_target_": "builtins.open", "file": "VICTIM", "mode": "w"}),
    "a target in a scheduler": (
        "scheduler",
        {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": {"_target_": "builtins.open"}},
    ),
    "oc.create under the model": (
        "model.activation",
        "${oc.create:{_target_: builtins.open, file: VICTIM, mode: w}}",
    ),
    "oc.decode as the data": ("data", '${oc.decode:"{_target_: builtins.open, file: VICTIM, mode: w}"}'),
    "oc.env in an unbuilt node": ("callbacks", {"leak": "${oc.env:TRUST_TEST_SECRET}"}),
    "hydra resolver": ("model.activation", "${hydra:runtime.cwd}"),
    "a tensor as a value": ("model.hidden", "TENSOR"),
    "no data": ("data", None),
}


def _fill(value: object, victim: Path, marker: Path, listener: list[object]) -> object:
    if isinstance(value, dict):
        return {k: _fill(v, victim, marker, listener) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, victim, marker, listener) for v in value]
    if value == "TENSOR":
        return torch.zeros(2)
    if value == "LISTENER":
        return listener
    if isinstance(value, str):
        return value.replace("VICTIM", str(victim)).replace("MARKER", str(marker))
    return value


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_a_hostile_stored_config_builds_nothing(
    case: str, xor_run: Path, tmp_path: Path, listener: socket.socket, monkeypatch
) -> None:
    monkeypatch.setenv("TRUST_TEST_SECRET", "s3cr3t")
    victim, marker = tmp_path / "victim.txt", tmp_path / "marker"
    victim.write_text("precious data\n")
    key, value = _HOSTILE[case]
    run_dir = _crafted_run(xor_run, tmp_path / "run", key, _fill(value, victim, marker, list(listener.getsockname())))
    with pytest.raises(UserError) as refused:
        restore(run_dir / "checkpoints" / "best.ckpt", trust=["my_parts"])
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"checkpoint {run_dir}/checkpoints/best.ckpt")
    assert "s3cr3t" not in line
    assert victim.read_text() == "precious data\n" and not marker.exists()
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected


def test_a_stored_data_module_never_downloads_and_reads_only_the_users_data_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    idx = {
        "_target_": "experiments.data.IDXDataModule",
        "data_dir": str(root / "mnist"),
        "download": True,
        "mirrors": ["http://127.0.0.1:9/"],
        "md5": {},
        "files": {"train_images": "a", "train_labels": "b", "test_images": "c", "test_labels": "d"},
    }
    rebuilt = rebuild_config(stored_config({**_XOR, "data": idx}, "c"), "c", (), root)
    assert rebuilt.data.download is False and "mirrors" not in rebuilt.data and "md5" not in rebuilt.data
    for options, refused in (
        ({"data_dir": str(tmp_path / "elsewhere" / "dropzone")}, "data.data_dir = .* is outside your data folder"),
        ({"data_dir": str(root / ".." / "escape")}, "is outside your data folder"),
        (
            {"files": {**idx["files"], "train_images": "/home/u/.ssh/id_rsa"}},
            "data.files.train_images = .* is not a plain",
        ),
        ({"files": {**idx["files"], "test_labels": "../x"}}, "is not a plain file name"),
    ):
        with pytest.raises(UserError, match=refused):
            rebuild_config(stored_config({**_XOR, "data": {**idx, **options}}, "c"), "c", (), root)
    # ETT downloads by default: a stored one never does, and never makes its folder elsewhere
    ett = {"_target_": "experiments.data.ETTDataModule", "data_dir": str(tmp_path / "made" / "by" / "ckpt")}
    with pytest.raises(UserError, match="outside your data folder"):
        rebuild_config(stored_config({**_XOR, "data": ett}, "c"), "c", (), root)
    ett["data_dir"] = str(root / "ett")
    assert rebuild_config(stored_config({**_XOR, "data": ett}, "c"), "c", (), root).data.download is False
    assert not (tmp_path / "made").exists()


def test_a_stored_trainer_keeps_only_how_a_model_computes(xor_run: Path, tmp_path: Path) -> None:
    dropped = tmp_path / "dropped"
    trainer = {
        "_target_": "experiments.engine.Trainer",
        "precision": "32-true",
        "default_root_dir": str(dropped),
        "profiler": {
            "_target_": "lightning.pytorch.profilers.SimpleProfiler",
            "dirpath": str(dropped),
            "filename": "x",
        },
        "callbacks": [{"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": str(dropped)}],
        "plugins": [{"_target_": "lightning.pytorch.plugins.TorchCheckpointIO"}],
        "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(dropped)},
    }
    run_dir = _crafted_run(xor_run, tmp_path / "run", "trainer", trainer)
    rebuilt = rebuild_config(
        stored_config(torch.load(run_dir / "checkpoints" / "best.ckpt")["config"], "c"), "c", (), tmp_path
    )
    assert set(rebuilt.trainer) == {"_target_", "precision"} and set(TRAINER_OPTIONS) >= {"precision"}
    for module in ("evaluate", "predict"):
        code, _, err = call_cli(module, f"ckpt_path={run_dir}/checkpoints/best.ckpt")
        assert code == 0, err
    assert not dropped.exists()


def test_stored_settings_that_would_crash_or_clash_are_one_line(
    xor_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: num_threads=100000 ended evaluate with "libgomp: Out of memory" (exit 1); task.monitor
    # was a TypeError's traceback; a precision whose package is missing was "Error in call to target".
    cases = {
        "trainer.num_threads": (100000, "trainer: trainer.num_threads=100000: more threads than any machine has cores"),
        "task": ({"monitor": "x"}, "task.monitor is not an option of the task: the run gives it the monitor itself"),
        "trainer.precision": ("transformer-engine", "trainer: Requirement 'transformer_engine"),
    }
    for key, (value, line) in cases.items():
        run_dir = _crafted_run(xor_run, tmp_path / key, key, value)
        code, out, err = call_cli("evaluate", f"ckpt_path={run_dir}/checkpoints/best.ckpt")
        assert code == 2 and err.startswith(f"error: {line}") and len(err.splitlines()) == 1, (key, err)
    # load_run: the same line, as a UserError (before: Hydra's InstantiationException and its chain)
    from experiments import load_run

    run_dir = _crafted_run(xor_run, tmp_path / "files", "data", {"_target_": "experiments.data.XORDataModule", "x": 1})
    with pytest.raises(UserError, match=r"^checkpoint .*: data.x is not an option of experiments.data.XORDataModule"):
        load_run(run_dir)
    monkeypatch.setenv("EXPERIMENTS_DATA", str(tmp_path))
    data = {"_target_": "experiments.data.ETTDataModule", "data_dir": str(tmp_path / "ett")}
    run_dir = _crafted_run(xor_run, tmp_path / "ett-run", "data", data)
    with pytest.raises(UserError, match=r"^data: .*ETTh1.csv does not exist"):
        load_run(run_dir, trust=(), config=None)


def test_a_checkpoint_is_a_mapping_of_finite_tensors_sized_before_anything_is_allocated(
    xor_run: Path, tmp_path: Path
) -> None:
    best = xor_run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    as_list = tmp_path / "list.ckpt"
    torch.save({**checkpoint, "state_dict": list(checkpoint["state_dict"].values())}, as_list)
    with pytest.raises(UserError, match="its state_dict is not a mapping of names to tensors"):
        restore(as_list)
    nan = tmp_path / "nan.ckpt"
    weights = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
    }
    torch.save({**checkpoint, "state_dict": weights}, nan)
    for module in ("evaluate", "predict"):
        code, out, err = call_cli(module, f"ckpt_path={nan}")
        assert code == 2 and "holds weights that are not finite (NaN or infinity in model." in err, err
        assert "test/acc" not in out and not (tmp_path / "predictions.csv").exists()
    # 2e9 hidden units would take 16 GB: sized on the meta device, refused under an 8 GB limit
    huge = tmp_path / "huge.ckpt"
    torch.save(
        {
            **checkpoint,
            "config": {**checkpoint["config"], "model": {**checkpoint["config"]["model"], "hidden": [2_000_000_000]}},
        },
        huge,
    )
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
    done = subprocess.run(
        [sys.executable, "-c", limit + "from experiments.evaluate import main; main()", f"ckpt_path={huge}"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"error: checkpoint {huge} does not fit the model of its config: ")


def test_the_command_line_forms_of_trust_and_of_a_checkpoint_path(xor_run: Path, tmp_path: Path) -> None:
    code, _, err = call_cli("evaluate", f"ckpt_path={xor_run}")
    assert code == 2 and err.strip() == (
        f"error: checkpoint path {xor_run} is a folder, not a checkpoint file; "
        f"pass ckpt_path={xor_run}/checkpoints/best.ckpt"
    )
    code, out, err = call_cli("evaluate", f"ckpt_path={xor_run}/checkpoints/best.ckpt", "trust=my_parts")
    assert code == 0 and "test/acc=" in out, err
    code, _, err = call_cli("evaluate", f"ckpt_path={xor_run}/checkpoints/best.ckpt", "trust=[my_parts,'a b']")
    assert code == 2 and "'a b' is not a package name" in err


def test_load_run_reads_only_this_runs_checkpoints(xor_run: Path, tmp_path: Path) -> None:
    from experiments import load_run

    run_dir = tmp_path / "received"
    shutil.copytree(xor_run, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    elsewhere = tmp_path / "elsewhere.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", elsewhere)
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "best_checkpoint": "../elsewhere.ckpt"}))
    loaded = load_run(run_dir)
    assert loaded.checkpoint == (run_dir / "checkpoints" / "best.ckpt").resolve() and loaded.run_dir == run_dir


def test_a_run_folder_of_pipes_and_devices_is_one_line_not_a_hang(xor_run: Path, tmp_path: Path) -> None:
    # Before: a named pipe as history.csv hung load_run for ever, and metrics.json linking to
    # /dev/zero read until memory ran out.
    from experiments import load_run

    for name, make in (
        ("history.csv", lambda path: os.mkfifo(path)),
        ("metrics.json", lambda path: path.symlink_to("/dev/zero")),
        ("metrics.json", lambda path: path.mkdir()),
    ):
        run_dir = tmp_path / f"received-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(xor_run, run_dir)
        (run_dir / name).unlink()
        make(run_dir / name)
        with pytest.raises(
            UserError, match=rf"^{run_dir / name} is damaged \(it is a (named pipe|device|folder), not a file\)"
        ):
            load_run(run_dir)

    # Hydra's record of a received run, an alias bomb: resume= refuses it in one line (before: for ever)
    run_dir = tmp_path / "bomb"
    shutil.copytree(xor_run, run_dir)
    bomb = "".join(
        f"{c}: &{c} [{', '.join([f'*{p}' if p else '1'] * 9)}]\n" for p, c in zip(["", *"abcdefg"], "abcdefgh")
    )
    (run_dir / ".hydra" / "overrides.yaml").write_text(bomb)
    code, _, err = call_cli("train", "experiment=xor", "trainer.max_epochs=2", "logger=none", f"resume={run_dir}")
    assert code == 2 and err.strip() == (
        f"error: cannot read {run_dir / '.hydra' / 'overrides.yaml'} (it uses YAML aliases (*name), which a run "
        f"never writes); it does not say which run {run_dir} holds: run in a new folder (hydra.run.dir=<new folder>)"
    )
