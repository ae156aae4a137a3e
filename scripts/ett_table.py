"""Train an ETT experiment at the four standard horizons and print its row of the results table.

    python scripts/ett_table.py etth1_lstm --data-dir ../shared/data/ett [--horizons 96 192] [-- key=value ...]

Each horizon is one ordinary ``python -m experiments.train`` run (one at a time); the table is
read back from the runs' ``metrics.json``, with the training time of each and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HORIZONS = (96, 192, 336, 720)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--data-dir", default=None, help="folder holding ETTh1.csv/ETTh2.csv (data.data_dir)")
    parser.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides, after --")
    args = parser.parse_args()

    rows = []
    for horizon in args.horizons:
        command = [
            sys.executable,
            "-m",
            "experiments.train",
            f"experiment={args.experiment}",
            f"data.horizon={horizon}",
        ]
        if args.data_dir:
            command += [f"data.data_dir={args.data_dir}", "data.download=false"]
        command += args.overrides
        print("$", " ".join(command[1:]), flush=True)
        load_before = os.getloadavg()[0]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"horizon {horizon} failed:\n{done.stderr[-3000:]}")
        run_dir = Path(re.findall(r"\| (\S+)\s*$", done.stdout.strip())[-1])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        test = metrics["test"]
        rows.append((horizon, test, metrics, load_before, os.getloadavg()[0], run_dir))
        print(
            f"H={horizon}: mse={test['test/mse']:.4f} mae={test['test/mae']:.4f} "
            f"epochs={metrics['epochs']} fit={metrics['fit_seconds']:.0f}s",
            flush=True,
        )

    print(f"\n{args.experiment} on {os.cpu_count()} CPU cores (load average before -> after each run)\n")
    print("| H | MSE | MAE | naive MSE | naive MAE | epochs | fit time | load | run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for horizon, test, metrics, before, after, run_dir in rows:
        print(
            f"| {horizon} | {test['test/mse']:.3f} | {test['test/mae']:.3f} | {test['test/naive_mse']:.3f} | "
            f"{test['test/naive_mae']:.3f} | {metrics['epochs']} | {metrics['fit_seconds']:.0f} s | "
            f"{before:.1f} -> {after:.1f} | {run_dir.name} |"
        )


if __name__ == "__main__":
    main()
