"""A real ``tensorboard`` process over a real sweep, read through its HTTP data API: what a user's
browser gets. The server is stopped by the test, which is bounded in time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from reliability_helpers import child_env

N_TRIALS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TensorBoard:
    def __init__(self, logdir: Path) -> None:
        self.port = _free_port()
        binary = Path(sys.executable).with_name("tensorboard")
        command = [str(binary)] if binary.exists() else [sys.executable, "-m", "tensorboard.main"]
        self.process = subprocess.Popen(
            [
                *command,
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--reload_interval",
                "1",
                "--load_fast",
                "false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def get(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        if body is not None:  # TensorBoard refuses a POST without these
            request.add_header("Content-Type", "application/json")
            request.add_header("X-XSRF-Protected", "1")
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return raw if response.headers.get_content_type() == "image/png" else json.loads(raw)

    def wait_for(self, check: Any, seconds: float) -> Any:
        """Poll until ``check()`` returns something true (TensorBoard loads the event files in the background)."""
        deadline = time.monotonic() + seconds
        last: Any = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"tensorboard stopped: {self.process.stderr.read()[-2000:]}"
            try:
                last = check()
                if last:
                    return last
            except (urllib.error.URLError, ConnectionError, ValueError):
                pass
            time.sleep(0.5)
        pytest.fail(f"tensorboard did not serve it within {seconds} s; last answer: {last!r}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.slow  # a 4-trial TPE sweep, a forecasting run and a tensorboard server: about a minute
def test_live_tensorboard_serves_every_trials_curves_hparams_and_images(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    sweep = outputs / "sweep"
    # The sweep and the forecasting run at the same time (independent runs, one machine's cores).
    # (its output to a file, so that a full pipe cannot hold it up while the forecasting run goes on)
    with open(tmp_path / "sweep.log", "w") as log:
        searching = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.train",
                "-m",
                "experiment=xor",
                "hparams_search=xor_tpe",
                f"hydra.sweeper.n_trials={N_TRIALS}",
                "trainer.max_epochs=5",
                "callbacks.history.verbose=false",
                f"hydra.sweep.dir={sweep}",
            ],
            cwd=tmp_path,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        forecast = run_cli(
            "train",
            "experiment=sine_lstm",
            "trainer.max_epochs=2",
            "callbacks.history.verbose=false",
            f"hydra.run.dir={outputs / 'forecast'}",
            cwd=tmp_path,
        )
        searching.wait(timeout=300)
    finally:
        if searching.poll() is None:
            os.killpg(searching.pid, signal.SIGKILL)  # the sweep and its workers
            searching.wait()
    assert forecast.returncode == 0, forecast.stderr[-3000:]
    assert searching.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    # Optuna's pictures of the study (three parameters: all three).
    pictures = sorted(p.name for p in sweep.glob("optuna_*.png"))
    assert len(pictures) >= 2, pictures
    trials = [f"sweep/{n}/tensorboard" for n in range(N_TRIALS)]
    metrics = {run: json.loads((outputs / Path(run).parent / "metrics.json").read_text()) for run in trials}

    board = TensorBoard(outputs)
    try:
        runs = board.wait_for(lambda: set(board.get("/data/runs")) >= {*trials, "forecast/tensorboard"}, 60)
        assert runs

        # Scalars: every trial's train, val and test curves, val/loss one point per epoch.
        tags = board.wait_for(
            lambda: (
                (t := board.get("/data/plugin/scalars/tags"))
                and all("test/acc" in t.get(run, {}) for run in trials)
                and t
            ),
            30,
        )
        for run in trials:
            assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"} <= set(tags[run])
            curve = board.get(f"/data/plugin/scalars/scalars?run={run}&tag=val/loss")
            assert [step for _, step, _ in curve] == list(range(5))
            assert all(0 < value < 10 for _, _, value in curve)

        # HPARAMS: one session per trial, its hyper-parameters and its real final metrics.
        everything = {
            "experimentName": "",
            "startIndex": 0,
            "sliceSize": 100,
            "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        }
        groups = board.wait_for(
            lambda: [
                g
                for g in board.get("/data/plugin/hparams/session_groups", everything)["sessionGroups"]
                if g["name"].startswith("sweep/")
            ],
            30,
        )
        assert sorted(g["name"] for g in groups) == trials
        experiment = board.get("/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {"optimizer.lr", "model.hidden", "model.activation"} <= {h["name"] for h in experiment["hparamInfos"]}
        for group in groups:
            [session] = group["sessions"]
            values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            truth = metrics[group["name"]]
            assert values["best/val_loss"] == pytest.approx(truth["best"])
            assert values["test/acc"] == pytest.approx(truth["test"]["test/acc"])
            assert values["test/loss"] == pytest.approx(truth["test"]["test/loss"])
            assert group["hparams"]["model.activation"] in ("tanh", "relu")
            assert 0.001 <= group["hparams"]["optimizer.lr"] <= 0.3

        # Images: learning curves of every run, a confusion matrix of every (classification) trial,
        # the forecasts of the forecasting run; each a real PNG.
        images = board.get("/data/plugin/images/tags")
        wanted = {run: {"learning_curves", "test/confusion_matrix"} for run in trials}
        wanted["forecast/tensorboard"] = {"learning_curves", "test/forecasts"}
        for run, names in wanted.items():
            assert names <= set(images[run]), (run, images.get(run))
            for name in names:
                [sample] = board.get(f"/data/plugin/images/images?run={run}&tag={name}&sample=0")
                png = board.get(f"/data/plugin/images/individualImage?{sample['query']}")
                assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    finally:
        board.stop()
    assert board.process.returncode is not None
