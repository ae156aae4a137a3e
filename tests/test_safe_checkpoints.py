"""A checkpoint crafted to run code when unpickled is refused, and its code never runs: through
evaluate, predict, and training resumed with ckpt_path= or resume=. Its other parts are data too:
callback states that name files elsewhere, a damaged random state, and a received run folder
whose files are links out of it write, delete and fetch nothing."""

from __future__ import annotations

import os
import shutil
import socket
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


# A checkpoint's callback state is data too (issue 23, class 1) ------------------------------


def test_a_checkpoints_callback_state_keeps_only_its_own_files(tmp_path: Path) -> None:
    from experiments.engine import ModelCheckpoint

    folder = tmp_path / "run" / "checkpoints"
    callback = ModelCheckpoint(dirpath=str(folder), monitor="val/loss", filename="best")
    own = str(callback.dirpath) + "/best.ckpt"
    callback.load_state_dict(
        {
            "dirpath": callback.dirpath,
            "best_model_path": f"local://{tmp_path / 'victim'}",
            "kth_best_model_path": "http://127.0.0.1:9/beacon",
            "last_model_path": str(tmp_path / "other_run" / "checkpoints" / "last.ckpt"),
            "best_k_models": {own: torch.tensor(0.5), str(tmp_path / "x.ckpt"): torch.tensor(0.1), "s3://b/k": 0.2},
            "best_model_score": "not a number",
            "kth_value": torch.tensor(0.5),
            "pending": {"path": str(tmp_path / "elsewhere.ckpt"), "checkpoint": {"state_dict": {}}},
        }
    )
    assert (callback.best_model_path, callback.kth_best_model_path, callback.last_model_path) == ("", "", "")
    assert list(callback.best_k_models) == [own] and callback.best_model_score is None
    assert callback._pending is None  # (this class's own attribute: no pending checkpoint from elsewhere)


def test_a_checkpoint_naming_other_files_in_its_callback_state_deletes_and_fetches_nothing(
    xor_run: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    host, port = server.getsockname()
    checkpoint = torch.load(xor_run / "checkpoints" / "last.ckpt", weights_only=True)
    for key, state in checkpoint["callbacks"].items():
        if key.startswith("ModelCheckpoint"):
            last = "'monitor': None" in key
            state["best_model_path"] = f"local://{victim}" if last else f"http://{host}:{port}/beacon"
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    try:
        code, _, err = call_cli(
            "train", "experiment=xor", "trainer.max_epochs=4", "logger=none", f"ckpt_path={crafted}",
            f"hydra.run.dir={tmp_path / 'new'}",
        )  # fmt: skip
        with pytest.raises(BlockingIOError):
            server.accept()  # no request
    finally:
        server.close()
    assert code == 0, err
    assert (victim / "precious.txt").read_text() == "keep me\n"


def test_a_damaged_resume_state_is_refused_before_the_run_folder_is_written(xor_run: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(xor_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["resume_state"]["python"] = [1, 2]
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    code, _, err = call_cli(
        "train", "experiment=xor", "logger=none", f"ckpt_path={crafted}", f"hydra.run.dir={tmp_path / 'new'}"
    )
    assert code == 2 and err.strip() == (
        f"error: checkpoint {crafted} holds a damaged resume_state (the random state and loader position that "
        "training continues from); use a last.ckpt or best.ckpt that a run of this project wrote"
    )
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("link", [".hydra/config.yaml", "checkpoints"])
def test_a_received_run_folder_with_links_is_refused_and_nothing_is_written_through_them(
    link: str, xor_run: Path, tmp_path: Path
) -> None:
    received, other = tmp_path / "received", tmp_path / "other"
    shutil.copytree(xor_run, received)
    shutil.copytree(xor_run, other)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (received / link).unlink() if link.endswith(".yaml") else shutil.rmtree(received / link)
    (received / link).symlink_to(victim if link.endswith(".yaml") else other / "checkpoints")
    before = {p: p.read_bytes() for p in [victim, *other.rglob("*")] if p.is_file()}
    code, _, err = call_cli("train", "experiment=xor", "trainer.max_epochs=4", "logger=none", f"resume={received}")
    assert code == 2 and err.strip().startswith(f"error: {received / link} is a symbolic link (to "), err
    assert len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in before} == before
    assert (
        not (received / "train.log").exists()
        or (received / "train.log").read_bytes() == (xor_run / "train.log").read_bytes()
    )
