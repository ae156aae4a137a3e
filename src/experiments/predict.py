"""``python -m experiments.predict ckpt_path=... [inputs=FILE.csv] [output=FILE.csv]``.

Like Keras's ``model.predict``: outputs of a trained model for its run's test split, or for the
rows of a CSV file, written to a CSV file and summarised on screen.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from experiments.cli import run_cli, user_errors_exit
from experiments.config import CONFIG_DIR
from experiments.data.contract import eval_batch_size, split_tensors
from experiments.data.loader import InMemoryLoader
from experiments.data.spec import DataSpec
from experiments.errors import UserError
from experiments.restore import restore, trusted
from experiments.runs import write_atomic

# Rows parsed at once: a big file is read in blocks of this many rows, never held as text.
BLOCK_ROWS = 65536
# Long jobs print where they are at most this often (seconds).
PROGRESS_SECONDS = 5.0


class _Ticker:
    """Prints ``what`` with a count at most every ``PROGRESS_SECONDS``: silent for short jobs."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what, self.total = what, total
        self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        of = f" of {self.total:,} ({100 * done / self.total:.0f}%)" if self.total else ""
        print(f"{self.what}: {done:,}{of}", flush=True)


def read_inputs(path: str | Path, spec: DataSpec) -> torch.Tensor:
    """Samples from a CSV file: one per row, its features flattened, an optional header row.

    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"); read and parsed in blocks of
    ``BLOCK_ROWS`` rows, so millions of rows take seconds. A row that is not ``width`` numbers, a
    value that is not a finite number (NaN, infinity, beyond float32) or a file that is not text is
    refused in one line that names it.
    """
    file = Path(path).expanduser()
    if file.exists() and not file.is_file():
        what = "a folder" if file.is_dir() else "not a regular file (a pipe or a device)"
        raise UserError(f"inputs={file} is {what}; pass inputs=<CSV file with one sample per row>")
    if not file.is_file():
        raise UserError(f"inputs file not found: {file}; pass inputs=<CSV file with one sample per row>")
    width = math.prod(spec.input_shape)
    blocks: list[np.ndarray] = []
    rows: list[list[str]] = []
    lines: list[int] = []
    count = 0
    ticker = _Ticker(f"reading {file.name}: rows")
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            first = True
            for row in reader:
                if not row:
                    continue
                if first:
                    first = False
                    if not _numeric(row):
                        continue  # a header
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) == BLOCK_ROWS:
                    blocks.append(_parse_block(file, rows, lines, count, width, spec))
                    count += len(rows)
                    rows, lines = [], []
                    ticker(count)
            if rows:
                blocks.append(_parse_block(file, rows, lines, count, width, spec))
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(
            f"{file} is not a CSV text file ({_first_words(err)}); predict reads UTF-8 text with one "
            "sample per row: save it as CSV (UTF-8)"
        ) from None
    if not blocks:
        raise UserError(f"{file} holds no samples")
    return torch.from_numpy(np.concatenate(blocks)).view(-1, *spec.input_shape)


def _first_words(err: BaseException) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"it holds byte 0x{err.object[err.start]:02x}, which is not UTF-8 text"
    return " ".join(str(err).split())[:100]


def _parse_block(
    file: Path, rows: list[list[str]], lines: list[int], before: int, width: int, spec: DataSpec
) -> np.ndarray:
    """One block of rows as float32 values, or one line naming the first row that is not ``width``
    finite numbers."""
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:  # a row of another length, or a value that is not a number
        values = None
    if values is None or values.ndim != 2 or values.shape[1] != width:
        for index, row in enumerate(rows):
            if len(row) != width or not _numeric(row):
                raise UserError(
                    f"{file}: data row {before + index + 1} (line {lines[index]}) should hold {width} numbers "
                    f"(input shape {list(spec.input_shape)}), got {row[:5]}{'...' if len(row) > 5 else ''}"
                )
        raise UserError(f"{file}: rows should hold {width} numbers (input shape {list(spec.input_shape)})")
    with np.errstate(over="ignore"):  # beyond float32's range becomes infinity, refused below
        values = values.astype(np.float32)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        index = int(np.argmin(finite))
        row = rows[index]
        raise UserError(
            f"{file}: data row {before + index + 1} (line {lines[index]}) holds a value that is not a finite "
            f"number: {row[:5]}{'...' if len(row) > 5 else ''}; a model gives no meaningful output for NaN, "
            "infinity or values beyond float32's range (3.4e38): fix or drop that row"
        )
    return values


class _PredictProgress(L.Callback):
    """``predicting: N of M (x%)`` at most every few seconds while a long prediction runs."""

    def __init__(self, total: int, batch_size: int) -> None:
        self.total, self.batch_size = total, batch_size
        self.ticker = _Ticker("predicting: rows", total)

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        batch_idx = args[3] if len(args) > 3 else kwargs.get("batch_idx", 0)
        self.ticker(min((batch_idx + 1) * self.batch_size, self.total))


def _check_writable(path: Path) -> None:
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: {folder} is not a writable folder; pass output=<writable path>")


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def _columns(name: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = values.reshape(len(values), -1)
    if flat.shape[1] == 1:
        return {name: flat[:, 0]}
    return {f"{name}_{i}": flat[:, i] for i in range(flat.shape[1])}


def _rows(table: dict[str, torch.Tensor], start: int, stop: int) -> list[tuple[Any, ...]]:
    """Rows ``start:stop`` of the table as Python numbers (a block at a time: millions of rows
    as Python floats at once would take gigabytes)."""
    return list(zip(*(column[start:stop].tolist() for column in table.values())))


def predictions(
    task: L.LightningModule,
    trainer: L.Trainer,
    inputs: torch.Tensor,
    batch_size: int,
    ckpt_path: str | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """What ``task.predict_step`` returns for ``inputs`` (``(N, *input_shape)``), batch by batch
    through ``trainer.predict`` (the run's precision and device), as one tensor per key.
    ``ckpt_path``: load these weights first, once the trainer has set the run's precision."""
    loader = InMemoryLoader(inputs, batch_size=batch_size)
    if progress:
        trainer.callbacks.append(_PredictProgress(len(inputs), batch_size))  # type: ignore[attr-defined]
    # One loader: a list of what predict_step returned, a dict of tensors per batch.
    batches = cast(
        list[dict[str, torch.Tensor]],
        trainer.predict(task, dataloaders=loader, ckpt_path=ckpt_path, weights_only=True),
    )
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def predict(cfg: DictConfig) -> Path:
    """Write the predictions of ``cfg.ckpt_path`` to a CSV file and return its path."""
    # Bad inputs or an unwritable output are refused before any prediction is made.
    batch_size = cfg.get("batch_size")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise UserError(f"batch_size={batch_size!r} must be a positive integer (or null: the run's eval batch size)")
    show = cfg.get("show")
    if not isinstance(show, int) or isinstance(show, bool) or show < 0:
        raise UserError(f"show={show!r} must be a non-negative integer: how many predictions to print")
    run = restore(cfg.ckpt_path, trusted(cfg.get("trust")), cfg.get("config"))
    given = read_inputs(cfg.inputs, cast(Any, run.datamodule).spec) if cfg.inputs else None
    if cfg.output:
        _check_writable(Path(cfg.output))
    targets = None
    if given is not None:
        inputs = given
    else:
        run.datamodule.setup("test")
        inputs, targets = split_tensors(run.datamodule, "test")
    batch_size = eval_batch_size(run.datamodule) if batch_size is None else batch_size
    outputs = predictions(
        run.task, run.trainer(), inputs, batch_size, ckpt_path=str(run.checkpoint_path), progress=True
    )

    table: dict[str, torch.Tensor] = {}
    if inputs[0].numel() <= 16:  # small inputs are worth repeating beside their predictions
        table.update(_columns("input", inputs))
    if targets is not None:
        table.update(_columns("target", targets))
    for name, values in outputs.items():
        table.update(_columns(name, values))

    output = Path(cfg.output) if cfg.output else run.run_dir / "predictions.csv"
    count = len(inputs)

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(table)
        ticker = _Ticker(f"writing {output.name}: rows", count)
        for start in range(0, count, BLOCK_ROWS):
            writer.writerows(_rows(table, start, start + BLOCK_ROWS))
            ticker(min(start + BLOCK_ROWS, count))

    write_atomic(output, write)
    _summarise(table, run.task.describe_predictions(outputs, targets), output, int(cfg.show))
    return output


def _summarise(table: dict[str, torch.Tensor], described: str, output: Path, show: int) -> None:
    names = [n for n in table if not n.startswith("probability_")]
    print(" ".join(names))
    for row in _rows({n: table[n] for n in names}, 0, show):
        print(" ".join(f"{v:.4f}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}" for v in row))
    count = len(next(iter(table.values())))
    print(f"{count} predictions -> {output}" + (f" | {described}" if described else ""))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@user_errors_exit
def _main(cfg: DictConfig) -> Any:
    return predict(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
