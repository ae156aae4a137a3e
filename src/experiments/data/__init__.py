"""Lightning data modules. Each declares a :class:`DataSpec` saying what it yields."""

from experiments.data.base import InMemoryDataModule
from experiments.data.loader import InMemoryLoader
from experiments.data.mnist import MNISTDataModule
from experiments.data.spec import DataSpec
from experiments.data.toy import LineDataModule, XORDataModule

__all__ = ["DataSpec", "InMemoryDataModule", "InMemoryLoader", "MNISTDataModule", "LineDataModule", "XORDataModule"]
