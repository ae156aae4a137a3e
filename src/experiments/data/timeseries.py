"""Multivariate time series cut into forecasting windows: the base module and a built-in series."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Literal

import torch

from experiments.data.base import InMemoryDataModule, Split
from experiments.data.spec import DataSpec
from experiments.errors import UserError

Features = Literal["M", "S", "MS"]


class StandardScaler:
    """Per-column mean and (population) standard deviation, as scikit-learn's ``StandardScaler``.

    Our own rather than scikit-learn's because it is a few lines on tensors, and scikit-learn
    would be a large dependency for it. Columns with zero spread are left unscaled.
    """

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def fit(self, values: torch.Tensor) -> StandardScaler:
        """Fit on ``values`` of shape (rows, columns); statistics in float64 for exactness."""
        wide = values.double()
        self.mean = wide.mean(dim=0)
        std = wide.std(dim=0, unbiased=False)
        self.std = torch.where(std > 0, std, torch.ones_like(std))
        return self

    def _stats(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean is None or self.std is None:
            raise RuntimeError("the scaler is not fitted yet: call fit() (the data module's setup()) first")
        columns = values.shape[-1]
        # Fewer columns than fitted: the target-only columns of S/MS, which are the last ones.
        mean, std = self.mean[-columns:], self.std[-columns:]
        return mean.to(values.device), std.to(values.device)

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(values)
        return ((values.double() - mean) / std).to(values.dtype)

    def inverse_transform(self, values: torch.Tensor) -> torch.Tensor:
        """Back to the units of the file; the last dimension holds the columns (all, or the last ones)."""
        mean, std = self._stats(values)
        return (values.double() * std + mean).to(values.dtype)


class WindowDataModule(InMemoryDataModule):
    """Windows of ``input_length`` steps in and ``horizon`` steps out of a multivariate series.

    Subclasses give the series (rows in time order, columns with the target last) and where the
    chronological train/validation/test split falls. Validation and test windows start
    ``input_length`` rows before their split, so that every target row of a split is forecast
    from a full window. The scaler is fitted on the training rows only; :meth:`inverse_transform`
    maps scaled values back. ``features``: ``"M"`` all columns in and out, ``"S"`` the target in
    and out, ``"MS"`` all columns in, the target out.

    ``stride`` spaces the training windows; validation and test always take every window (and
    never drop a last partial batch), as the published protocol measures them.
    """

    def __init__(
        self,
        input_length: int = 96,
        horizon: int = 96,
        features: Features = "M",
        stride: int = 1,
        scale: bool = True,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        if input_length < 1 or horizon < 1 or stride < 1:
            raise ValueError(
                f"input_length, horizon and stride must be positive, got {input_length}, {horizon}, {stride}"
            )
        if features not in ("M", "S", "MS"):
            raise ValueError(f"features must be 'M', 'S' or 'MS', got {features!r}")
        self.input_length = input_length
        self.horizon = horizon
        self.features = features
        self.stride = stride
        self.scale = scale
        self.scaler = StandardScaler()

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """Names of the series' columns, the target last; known before :meth:`setup`."""

    @abstractmethod
    def load_series(self) -> torch.Tensor:
        """The whole series, shape (rows, len(columns)), rows in time order."""

    @abstractmethod
    def split_rows(self, num_rows: int) -> tuple[int, int, int]:
        """The rows where training, validation and test end (exclusive), in that order."""

    @property
    def target(self) -> str:
        return self.columns[-1]

    @property
    def spec(self) -> DataSpec:
        channels = len(self.columns)
        inputs = 1 if self.features == "S" else channels
        outputs = channels if self.features == "M" else 1
        return DataSpec(
            input_shape=(self.input_length, inputs),
            output_shape=(self.horizon, outputs),
            task="forecasting",
        )

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        series = self.load_series().double()
        train_end, val_end, test_end = self.split_rows(len(series))
        if self.scale:
            series = self.scaler.fit(series[:train_end]).transform(series)
        series = series.float()
        if self.features == "S":
            series = series[:, -1:]
        length = self.input_length
        self.train_set = self._windows(series[:train_end], "training", self.stride)
        self.val_set = self._windows(series[max(train_end - length, 0) : val_end], "validation", 1)
        self.test_set = self._windows(series[max(val_end - length, 0) : test_end], "test", 1)

    def _windows(self, rows: torch.Tensor, split: str, stride: int) -> Split:
        """(inputs, targets) of every window of ``rows``: views of ``rows``, no copies."""
        span = self.input_length + self.horizon
        if len(rows) < span:
            raise UserError(
                f"the {split} part of {type(self).__name__} has {len(rows)} rows, fewer than "
                f"input_length + horizon = {span}; choose a shorter input_length or horizon"
            )
        windows = rows.unfold(0, span, stride).transpose(1, 2)  # (windows, span, columns)
        outputs = self.spec.output_shape[1]
        return windows[:, : self.input_length], windows[:, self.input_length :, -outputs:]

    def inverse_transform(self, values: torch.Tensor) -> torch.Tensor:
        """Scaled inputs or forecasts (columns last) back in the units of the series."""
        return self.scaler.inverse_transform(values) if self.scale else values


class SineDataModule(WindowDataModule):
    """A sum of sines with Gaussian noise per column, reproducible from ``series_seed``; no file needed.

    Each column adds ``waves`` sines whose periods (between ``min_period`` and ``max_period``
    steps), amplitudes and phases are drawn from ``series_seed``; ``seed`` only orders the
    training batches, so runs with different seeds see the same series. The split is chronological by
    ``split`` fractions of the rows (train, validation; the test takes the rest).
    """

    def __init__(
        self,
        num_rows: int = 4000,
        num_columns: int = 3,
        waves: int = 3,
        min_period: float = 12.0,
        max_period: float = 96.0,
        noise: float = 0.05,
        split: tuple[float, float] = (0.7, 0.1),
        series_seed: int = 0,
        input_length: int = 96,
        horizon: int = 48,
        features: Features = "M",
        stride: int = 1,
        scale: bool = True,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(input_length, horizon, features, stride, scale, batch_size, eval_batch_size, seed)
        if num_rows < 1 or num_columns < 1 or waves < 1:
            raise ValueError(
                f"num_rows, num_columns and waves must be positive, got {num_rows}, {num_columns}, {waves}"
            )
        if not 0 < min_period <= max_period:
            raise ValueError(f"need 0 < min_period <= max_period, got {min_period}, {max_period}")
        if len(split) != 2 or min(split) <= 0 or sum(split) >= 1:
            raise ValueError(f"split must be two positive fractions (train, validation) summing below 1, got {split}")
        self.num_rows = num_rows
        self.num_columns = num_columns
        self.waves = waves
        self.min_period = min_period
        self.max_period = max_period
        self.noise = noise
        self.split = tuple(split)
        self.series_seed = series_seed

    @property
    def columns(self) -> list[str]:
        return [f"s{i}" for i in range(self.num_columns)]

    def load_series(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.series_seed)
        shape = (1, self.num_columns, self.waves)
        log_min, log_max = math.log(self.min_period), math.log(self.max_period)
        periods = torch.exp(log_min + (log_max - log_min) * torch.rand(shape, generator=generator, dtype=torch.float64))
        amplitudes = 0.5 + torch.rand(shape, generator=generator, dtype=torch.float64)
        phases = 2 * math.pi * torch.rand(shape, generator=generator, dtype=torch.float64)
        t = torch.arange(self.num_rows, dtype=torch.float64).reshape(-1, 1, 1)
        clean = (amplitudes * torch.sin(2 * math.pi * t / periods + phases)).sum(dim=-1)
        noise = self.noise * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        return (clean + noise).float()

    def split_rows(self, num_rows: int) -> tuple[int, int, int]:
        train_end = int(num_rows * self.split[0])
        val_end = train_end + int(num_rows * self.split[1])
        return train_end, val_end, num_rows
