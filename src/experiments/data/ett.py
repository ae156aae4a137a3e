"""ETTh1 and ETTh2 (Electricity Transformer Temperature, hourly) on the reference protocol."""

from __future__ import annotations

import csv
import io
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import torch

from experiments.data.base import refuse_non_file
from experiments.data.timeseries import Features, WindowDataModule
from experiments.errors import UserError

ETT_COLUMNS = ["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{name}.csv"
# Twelve months of training, four of validation, four of test, in hours: the rows that the
# reference implementation (Informer, Zhou et al. 2021, followed by Autoformer, DLinear, PatchTST)
# uses for the hourly files.
ETT_HOURLY_SPLIT = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)


class ETTDataModule(WindowDataModule):
    """``ETTh1`` or ``ETTh2``: 7 hourly columns, the target ``OT`` (oil temperature) last.

    The split is the reference protocol's: training rows [0, 8640), validation rows
    [8640 - L, 11520), test rows [11520 - L, 14400), the scaler fitted on rows [0, 8640).
    The file is read from ``data_dir/<name>.csv``; when it is missing and ``download`` is true it
    is fetched from the ETDataset repository first.
    """

    def __init__(
        self,
        name: Literal["ETTh1", "ETTh2"] = "ETTh1",
        data_dir: str = "data/ett",
        download: bool = True,
        input_length: int = 96,
        horizon: int = 96,
        features: Features = "M",
        stride: int = 1,
        scale: bool = True,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(input_length, horizon, features, stride, scale, batch_size, eval_batch_size, seed)
        if name not in ("ETTh1", "ETTh2"):
            raise ValueError(f"name must be 'ETTh1' or 'ETTh2', got {name!r}")
        self.name = name
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        if not download:
            self._check_file()  # before a trainer starts or a run folder fills

    @property
    def columns(self) -> list[str]:
        return ETT_COLUMNS[1:]

    @property
    def path(self) -> Path:
        return self.data_dir / f"{self.name}.csv"

    def _check_file(self) -> None:
        if not self.path.is_file():
            raise UserError(
                f"{self.path} does not exist; put {self.name}.csv there (from "
                f"{ETT_URL.format(name=self.name)}) or set data.download=true"
            )

    def prepare_data(self) -> None:
        refuse_non_file(self.path, f"{self.name}.csv")
        if self.path.is_file():
            return
        if not self.download:
            self._check_file()
        fetch(ETT_URL.format(name=self.name), self.path)

    def load_series(self) -> torch.Tensor:
        self.prepare_data()  # also when setup() is called without a Trainer
        return read_csv_columns(self.path, ETT_COLUMNS)

    def split_rows(self, num_rows: int) -> tuple[int, int, int]:
        needed = ETT_HOURLY_SPLIT[-1]
        if num_rows < needed:
            raise UserError(
                f"{self.path} has {num_rows} data rows; the ETT protocol needs at least {needed}: "
                f"replace it with the full file from {ETT_URL.format(name=self.name)}"
            )
        return ETT_HOURLY_SPLIT


def fetch(url: str, path: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``path`` through a temporary file, so a broken download leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url, timeout=timeout) as response:
            handle.write(response.read())
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as err:
        raise UserError(
            f"{path} is missing and downloading it from {url} failed ({err}); "
            f"without a network, put {path.name} into {path.parent}"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_csv_columns(path: Path, expected: list[str]) -> torch.Tensor:
    """The numeric columns of a CSV whose header is exactly ``expected`` (the first column skipped).

    Read with the standard library: pandas would be a dependency for one small file. Any damage
    (not UTF-8 text, a binary file, a row of another length, a value that is not a finite
    number) raises one :class:`UserError` that names the file and the line.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (a spreadsheet's "CSV UTF-8") is no column
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path} line {line} is not UTF-8 text (byte {raw[err.start]:#04x}); replace the file with the original"
        ) from None
    try:
        return _parse_csv(path, text, expected)
    except csv.Error as err:
        raise UserError(f"{path} is not a CSV text file ({err}); replace the file with the original") from None


def _parse_csv(path: Path, text: str, expected: list[str]) -> torch.Tensor:
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != expected:
            got = header or []
            missing = [c for c in expected if c not in got]
            extra = [c for c in got if c not in expected]
            problem = "; ".join(
                part
                for part in (
                    f"missing columns {missing}" if missing else "",
                    f"unexpected columns {extra}" if extra else "",
                    "columns out of order" if not missing and not extra else "",
                )
                if part
            )
            raise UserError(
                f"{path}: {problem}; the header must be {','.join(expected)} (replace the file with the original)"
            )
        rows: list[list[float]] = []
        lines: list[int] = []
        for record in reader:
            line = reader.line_num
            if not record:  # a blank line (one at the end, say) holds no row
                continue
            if len(record) != len(expected):
                raise UserError(
                    f"{path} line {line}: {len(record)} fields, expected {len(expected)}; fix or replace the file"
                )
            try:
                rows.append([float(value) for value in record[1:]])
                lines.append(line)
            except ValueError:
                bad = next(v for v in record[1:] if not _is_number(v))
                raise UserError(f"{path} line {line}: {bad!r} is not a number; fix or replace the file") from None
    if not rows:
        raise UserError(f"{path} has no data rows; replace it with the original file")
    values = torch.tensor(rows, dtype=torch.float64)
    if not torch.isfinite(values).all():
        row = int(torch.nonzero(~torch.isfinite(values).all(dim=1))[0])
        raise UserError(f"{path} line {lines[row]}: a value is not finite (nan or inf); fix or replace the file")
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
