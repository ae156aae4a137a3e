"""How a run ends, and who writes its folder (experiments.record): SIGTERM exits 143 with the run
marked interrupted and one line saying how to resume it; a second writer of a run folder is refused
and leaves the first run's files as they were; a refused resume rewrites nothing; a resumed
finished run keeps its results and its whole fit time."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from reliability_helpers import call_cli, start

XOR = ["experiment=xor", "logger=none", "callbacks.history.verbose=false"]


def _files(run_dir: Path) -> dict[str, tuple[bytes, float]]:
    """Hydra's files and the log of a run: contents and modification times."""
    paths = [*sorted((run_dir / ".hydra").iterdir()), run_dir / "train.log"]
    return {p.name: (p.read_bytes(), p.stat().st_mtime) for p in paths}


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_sigterm_during_fit_exits_143_and_a_second_writer_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Trains far longer than the test lasts: only SIGTERM ends it.
    first = start(
        "train",
        *XOR,
        "checkpoint_every_n_steps=25",
        "trainer.max_epochs=100000",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").is_file():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = _files(run_dir)
        # Another command into the same folder, and a resume of it, while the first one trains.
        for second in ([*XOR, f"hydra.run.dir={run_dir}"], [*XOR, f"resume={run_dir}"]):
            code, _, err = call_cli("train", *second)
            assert code == 2
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert lines[0].startswith(
                f"error: {run_dir} is being written by process {first.pid} on {socket.gethostname()} since 20"
            ), lines[0]
        assert _files(run_dir) == before
        assert not (run_dir / "metrics.json").exists()
        os.kill(first.pid, signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    assert first.returncode == 143, err[-2000:]
    said = [line for line in err.splitlines() if "SIGTERM" in line or "resume=" in line]
    assert len(said) == 1 and said == err.strip().splitlines()[-1:], err[-2000:]
    assert said[0].startswith("error: interrupted (SIGTERM) at step ")
    assert said[0].endswith(
        f"continue with: python -m experiments.train {' '.join(XOR)} checkpoint_every_n_steps=25 "
        f"trainer.max_epochs=100000 resume={run_dir}"
    )
    metrics = _metrics(run_dir)
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
    assert metrics["error"] == said[0].removeprefix("error: ")


def test_sigterm_outside_fit_is_recorded_the_same_way(tmp_path: Path) -> None:
    term = "+callbacks.term._target_=reliability_helpers.TermAt"
    for hook in ("init", "test_start"):
        run_dir = tmp_path / hook
        code, _, err = call_cli(
            "train", *XOR, "trainer.max_epochs=2", term, f"+callbacks.term.hook={hook}", f"hydra.run.dir={run_dir}"
        )
        assert code == 143, err[-2000:]
        line = err.strip().splitlines()[-1]
        assert [ln for ln in err.splitlines() if "SIGTERM" in ln] == [line]
        metrics = _metrics(run_dir)
        assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
        if hook == "init":  # set up, nothing trained
            assert line == "error: interrupted (SIGTERM) before any checkpoint was written; run the same command again"
        else:  # trained, testing: resume tests it again
            assert line.startswith(
                "error: interrupted (SIGTERM) at step 2 (epoch 3); checkpoints/last.ckpt holds step 2"
            )
            assert line.endswith(f" resume={run_dir}")


def test_sigterm_mid_epoch_takes_last_ckpt_at_that_batch_end(tmp_path: Path) -> None:
    # 8 steps an epoch in chunks of 3: SIGTERM during the chunk that ends at step 6 (not the
    # epoch's last batch) stops the run there, and last.ckpt holds step 6, not the epoch's start.
    import torch

    run_dir = tmp_path / "run"
    code, _, err = call_cli(
        "train",
        *XOR,
        "name=blobs",
        "data._target_=reliability_helpers.BlobsDataModule",
        "data.batch_size=32",
        "trainer.steps_per_execution=3",
        "trainer.max_epochs=3",
        "+callbacks.term._target_=reliability_helpers.TermAt",
        "+callbacks.term.hook=train_batch_end",
        "+callbacks.term.step=4",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 143, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: interrupted (SIGTERM) at step 6 (epoch 1); checkpoints/last.ckpt holds step 6; "), (
        line
    )
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert _metrics(run_dir)["step"] == 6


def test_sigterm_after_the_checkpoints_of_an_epoch_still_loses_nothing(tmp_path: Path) -> None:
    # SIGTERM after last.ckpt's hook at an epoch's end (XOR: every batch is the last of its epoch),
    # or inside validation (blobs: 2 validation batches): Lightning looks for the signal there, past
    # the point where last.ckpt is taken, and used to stop with last.ckpt up to 5 s (its
    # min_write_interval) behind. The run goes on to the next batch or epoch end and stops there.
    import torch

    cases = {
        "xor": [*XOR, "trainer.max_epochs=200", "+callbacks.term.hook=train_epoch_end", "+callbacks.term.epoch=30"],
        "blobs": [
            *XOR,
            "name=blobs",
            "data._target_=reliability_helpers.BlobsDataModule",
            "data.batch_size=32",
            "trainer.max_epochs=6",
            "+callbacks.term.hook=validation_batch_start",
            "+callbacks.term.epoch=3",
        ],
    }
    for name, overrides in cases.items():
        run_dir = tmp_path / name
        term = "+callbacks.term._target_=reliability_helpers.TermAfterCheckpoints"
        code, _, err = call_cli("train", *overrides, term, f"hydra.run.dir={run_dir}")
        assert code == 143, err[-2000:]
        line = err.strip().splitlines()[-1]
        step = _metrics(run_dir)["step"]
        assert line.startswith(f"error: interrupted (SIGTERM) at step {step} ") and f"holds step {step};" in line, line
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
        # One more epoch than the signal's (XOR: step 31), or the rest of the epoch (blobs: 3 x 8 steps).
        assert step == {"xor": 31, "blobs": 24}[name], (name, step)


def test_a_refused_resume_rewrites_nothing_of_the_run_it_names(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    code, _, err = call_cli("train", "-m", *XOR, "trainer.max_epochs=3", "model.hidden=[4]", f"hydra.sweep.dir={sweep}")
    assert code == 0, err[-2000:]
    trial = sweep / "0"
    before = _files(trial)
    results, config = (trial / "metrics.json").read_bytes(), (trial / "config.yaml").read_bytes()
    # Without the trial's model.hidden=[4]: refused, with the command that continues it unchanged.
    code, _, err = call_cli("train", *XOR, "trainer.max_epochs=3", f"resume={trial}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: resume={trial}: this command's overrides differ"), err
    assert "model.hidden=[4] in the run, no model.hidden here" in lines[0]
    assert f"continue it unchanged with: python -m experiments.train {' '.join(XOR[:2])} " in lines[0]
    assert "'model.hidden=[4]'" in lines[0] and "resume_with_changes=true" in lines[0]
    # Told to go ahead, its checkpoint doesn't fit the default model: refused all the same.
    code, _, err = call_cli("train", *XOR, "trainer.max_epochs=3", f"resume={trial}", "resume_with_changes=true")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "does not fit the model of this config" in lines[0], err
    # Lightning's own refusal, inside the fit: a checkpoint of epoch 3 with max_epochs=1.
    code, _, err = call_cli(
        "train", *XOR, "trainer.max_epochs=1", "model.hidden=[4]", f"resume={trial}", "resume_with_changes=true"
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "max_epochs=1" in lines[0], err
    assert _files(trial) == before
    assert (trial / "metrics.json").read_bytes() == results
    assert (trial / "config.yaml").read_bytes() == config


def test_resuming_a_finished_run_keeps_its_results_and_sums_its_fit_time(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, _, err = call_cli("train", *XOR, "trainer.max_epochs=20", f"hydra.run.dir={run_dir}")
    assert code == 0, err[-2000:]
    first = _metrics(run_dir)
    # Nothing left to train: the results stay.
    code, _, err = call_cli("train", *XOR, "trainer.max_epochs=20", f"resume={run_dir}")
    assert code == 0, err[-2000:]
    again = _metrics(run_dir)
    assert again["val"] == first["val"] and again["val"]
    assert again["test"] == first["test"] and again["best"] == first["best"]
    assert first["fit_seconds"] <= again["fit_seconds"] < first["fit_seconds"] + 2.0
    # Trained on (a deliberate change of its overrides): the fit time is that of both segments,
    # and the run records the overrides it was continued with.
    code, _, err = call_cli("train", *XOR, "trainer.max_epochs=40", f"resume={run_dir}", "resume_with_changes=true")
    assert code == 0, err[-2000:]
    more = _metrics(run_dir)
    assert more["epochs"] == 40 and set(more["val"]) == set(first["val"])
    assert more["fit_seconds"] > first["fit_seconds"] and more["restarts"] == 1
    rows = (run_dir / "history.csv").read_text().splitlines()
    assert len(rows) == 41
    assert "trainer.max_epochs=40" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "resume" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "max_epochs: 40" in (run_dir / "config.yaml").read_text()
