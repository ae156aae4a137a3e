"""The primer's first example, number for number: one neuron learning y = 2x."""

from __future__ import annotations

import csv
from pathlib import Path

from reliability_helpers import call_cli

# epoch, loss (that epoch's forward pass, before its update), w and b (after the update)
PRIMER_TABLE = [
    (1, 30.0000, 3.0000, 1.0000),
    (2, 13.5000, 1.0000, 0.3000),
    (3, 6.0900, 2.3500, 0.7400),
    (4, 2.7614, 1.4550, 0.4170),
    (5, 1.2653, 2.0640, 0.6061),
]


def test_neuron_prints_and_records_the_primer_table(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # In this process, exactly as the console script runs it (run_cli around the Hydra main).
    code, out, err = call_cli("train", "experiment=neuron", f"hydra.run.dir={run_dir}")
    assert code == 0, err

    printed = [line.split() for line in out.splitlines()]
    header = printed.index(["epoch", "train/loss", "w", "b"])
    expected_lines = [[str(e), f"{loss:.4f}", f"{w:.4f}", f"{b:.4f}"] for e, loss, w, b in PRIMER_TABLE]
    assert printed[header + 1 : header + 6] == expected_lines

    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    for row, (epoch, loss, w, b) in zip(rows, PRIMER_TABLE):
        assert int(row["epoch"]) == epoch
        assert round(float(row["train/loss"]), 4) == loss
        assert round(float(row["w"]), 4) == w
        assert round(float(row["b"]), 4) == b
