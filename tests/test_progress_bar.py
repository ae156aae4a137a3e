"""A progress bar in a terminal (a real pty, as a user's shell gives), none in a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from conftest import REPO

# 128-image batches of 2500 training images (3000 less 500 for validation): 20 batches.
CNN = [
    "experiment=mnist_cnn",
    "data.train_limit=3000",
    "data.val_size=500",
    "trainer.max_epochs=1",
    "+trainer.limit_test_batches=1",
]
BAR = re.compile(rb"epoch 1/1:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)[ ,]")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.pop("HYDRA_FULL_ERROR", None)
    for name in ("COLUMNS", "LINES"):  # they win over the terminal's own size (shutil.get_terminal_size)
        env.pop(name, None)
    return env


def _train_in_a_terminal(
    args: list[str], cwd: Path, timeout: float = 240, columns: int = 120
) -> list[tuple[float, bytes]]:
    """Run ``python -m experiments.train args`` on a ``columns``x40 pseudo-terminal; its output, in timed pieces."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=cwd,
        env=_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    pieces: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                pieces.append((time.monotonic(), chunk))
            elif process.poll() is not None:
                break
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, b"".join(p for _, p in pieces)[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return pieces


@pytest.mark.slow  # a short mnist_cnn run in a terminal, a short XOR run into a pipe
def test_a_terminal_shows_a_moving_bar_within_two_seconds_and_a_pipe_shows_none(tmp_path: Path) -> None:
    pieces = _train_in_a_terminal([*CNN, f"hydra.run.dir={tmp_path / 'tty'}"], tmp_path)
    # Every redraw of the training bar, with when it arrived: (time, batches done, batches in the epoch).
    draws = [(when, int(m.group(1)), int(m.group(2))) for when, chunk in pieces for m in BAR.finditer(chunk)]
    assert draws, b"".join(p for _, p in pieces)[-3000:]
    opened = draws[0]
    assert opened[1] == 0 and opened[2] == 20
    moved = [d for d in draws if d[1] > 0]
    # The first batch ends well within a second of the bar's opening; the bar shows it at once.
    assert moved and moved[0][0] - opened[0] < 2.0, [(round(t - opened[0], 2), n) for t, n, _ in draws]
    assert len({n for _, n, _ in moved}) >= 2  # it moves
    # At most a few redraws a second (refresh_seconds=0.25), never one per batch.
    seconds = draws[-1][0] - opened[0]
    assert len(draws) <= 3 + 5 * seconds
    text = b"".join(p for _, p in pieces).decode(errors="replace")
    for bar in ("sanity check", "validating", "testing"):
        assert f"{bar}:" in text
    # The bar is cleared; History's line of the epoch stays.
    assert re.search(r"\n1 \d\.\d{4} \d\.\d{4} \d\.\d{4} \d\.\d{4}\r?\n", text)

    # Into a pipe (the same callbacks whatever the model; 30 XOR epochs would show any bar)
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "experiment=xor",
            "trainer.max_epochs=30",
            f"hydra.run.dir={tmp_path / 'pipe'}",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert piped.returncode == 0, piped.stderr[-3000:]
    out = piped.stdout + piped.stderr
    assert "%|" not in out and "batch/s" not in out and "\r" not in out
    assert re.search(r"\n1 \d\.\d{4} \d\.\d{4} \d\.\d{4} \d\.\d{4}\n", piped.stdout)


def test_a_narrow_terminal_keeps_the_loss_in_view(tmp_path: Path) -> None:
    # 40 columns: the bar itself shrinks, and what does not fit is cut after the loss (the times).
    args = ["experiment=xor", "trainer.max_epochs=30", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    text = b"".join(p for _, p in _train_in_a_terminal(args, tmp_path, columns=40)).decode(errors="replace")
    frames = [f for f in re.split(r"[\r\n]", text) if re.match(r"epoch \d+/\d+: ", f)]
    with_loss = [f for f in frames if re.search(r"\d+/1, loss=\d\.\d{4}", f)]
    assert with_loss, frames[-5:]
    assert all(len(f.rstrip()) <= 40 for f in frames), [f for f in frames if len(f.rstrip()) > 40][:3]
