"""What the terminal progress bar costs: fit time of the primer MLP with the bar and without it.

    python scripts/bench_progress_bar.py                 # 3 pairs of 1-epoch fits of mnist_mlp
    python scripts/bench_progress_bar.py --repeats 5 --epochs 2 -- data.train_limit=20000

Each pair runs ``python -m experiments.train experiment=mnist_mlp`` twice, in turns: once on a
pseudo-terminal (the bar drawn, as in a user's shell) and once with ``trainer.enable_progress_bar=false``
on the same terminal (History's lines only). The fit time is the run's own ``fit_seconds``
(``metrics.json``), so process start-up and data loading do not count. Prints each pair and the
median ratio; the bar is meant to cost under 1%. On a shared machine the noise between two
identical fits is larger than that, so the run with the bar also times the bar itself: every hook
of the progress-bar callback, clock to clock, summed over the fit (``bar's own time``), which is
what the bar adds to the fit whatever the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fit_seconds(args: list[str], run_dir: Path) -> float:
    """Fit seconds of one run on a pseudo-terminal of 120x40."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", *args, f"hydra.run.dir={run_dir}"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=run_dir.parent,
    )
    os.close(slave)
    while True:  # drain the terminal as a terminal emulator would
        ready, _, _ = select.select([master], [], [], 1.0)
        try:
            if ready and not os.read(master, 65536):
                break
        except OSError:
            break
        if not ready and process.poll() is not None:
            break
    os.close(master)
    if process.wait() != 0:
        raise SystemExit(f"error: the run in {run_dir} failed; see its train.log")
    return float(json.loads((run_dir / "metrics.json").read_text())["fit_seconds"])


def child(args: list[str]) -> None:
    """``python -m experiments.train args``, with every hook of the progress bar timed; the total
    goes to ``<run dir>/bar_seconds.json``."""
    import atexit
    import inspect

    from experiments.callbacks import ProgressBar

    spent = [0.0]
    for name, hook in inspect.getmembers(ProgressBar, inspect.isfunction):
        if name.startswith("on_") or name in ("_advance", "_open", "_close"):

            def timed(*a, _hook=hook, **k):
                started = time.perf_counter()
                try:
                    return _hook(*a, **k)
                finally:
                    spent[0] += time.perf_counter() - started

            setattr(ProgressBar, name, timed)
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir="))
    atexit.register(lambda: Path(run_dir, "bar_seconds.json").write_text(json.dumps(spent[0])))
    sys.argv = ["experiments.train", *args]
    from experiments.train import main as train_main

    train_main()


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of fits (default 3)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per fit (default 1)")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run, after --")
    options = parser.parse_args()
    base = ["experiment=mnist_mlp", f"trainer.max_epochs={options.epochs}", "logger=none", *options.overrides]
    ratios: list[float] = []
    shares: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(options.repeats):
            # In turns, and the order flipped every pair, so that a drift in the machine's load
            # does not favour one side.
            order = [("bar", []), ("no bar", ["trainer.enable_progress_bar=false"])]
            if i % 2:
                order.reverse()
            times = {
                name: fit_seconds(base + extra, Path(folder) / f"{i}-{name.replace(' ', '_')}") for name, extra in order
            }
            ratios.append(times["bar"] / times["no bar"])
            own = json.loads((Path(folder) / f"{i}-bar" / "bar_seconds.json").read_text())
            shares.append(own / times["bar"])
            print(
                f"pair {i + 1}: with bar {times['bar']:.3f} s, without {times['no bar']:.3f} s, ratio {ratios[-1]:.4f}; "
                f"bar's own time {own * 1000:.1f} ms ({shares[-1]:.2%} of the fit)",
                flush=True,
            )
    print(f"median ratio (with/without) over {options.repeats} pairs: {statistics.median(ratios):.4f}")
    print(f"bar's own time, median share of the fit: {statistics.median(shares):.2%} (max {max(shares):.2%})")


if __name__ == "__main__":
    main()
