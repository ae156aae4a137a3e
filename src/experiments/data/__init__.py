"""Lightning data modules. Each declares a :class:`DataSpec` saying what it yields."""

from experiments.data.base import InMemoryDataModule
from experiments.data.ett import ETTDataModule
from experiments.data.idx import IDXDataModule
from experiments.data.loader import InMemoryLoader
from experiments.data.spec import DataSpec
from experiments.data.timeseries import SineDataModule, StandardScaler, WindowDataModule
from experiments.data.toy import LineDataModule, XORDataModule

__all__ = [
    "DataSpec",
    "ETTDataModule",
    "IDXDataModule",
    "InMemoryDataModule",
    "InMemoryLoader",
    "LineDataModule",
    "SineDataModule",
    "StandardScaler",
    "WindowDataModule",
    "XORDataModule",
]
