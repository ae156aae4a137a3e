"""MNIST from the four gzipped IDX files the project ships, held in memory as tensors."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
import torch
import torch.nn.functional as F

from experiments.data.base import InMemoryDataModule, Split
from experiments.data.spec import DataSpec
from experiments.errors import UserError

# (file name, IDX magic number, expected shape) of each split, as torchvision names the files.
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 2051, (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte.gz", 2049, (60000,)),
    "test_images": ("t10k-images-idx3-ubyte.gz", 2051, (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 2049, (10000,)),
}
# Mean and standard deviation of the training pixels scaled to [0, 1].
MEAN, STD = 0.1307, 0.3081


def read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A gzipped IDX file of unsigned bytes as a uint8 tensor of ``shape``.

    Any fault (missing, not gzip, truncated, wrong magic number or size) raises one
    :class:`UserError` that names the file. Our own reader rather than torchvision's because
    torchvision's fails with bare struct/assert errors that don't name the file.
    """
    if not path.is_file():
        raise UserError(
            f"MNIST file {path} is missing; point data.data_dir at the folder holding the four "
            f"MNIST .gz files, or set data.download=true to fetch them"
        )
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"MNIST file {path} is corrupt or truncated ({err}); replace it with a fresh copy") from None
    dims = len(shape)
    header = 4 + 4 * dims
    if len(raw) < header:
        raise UserError(f"MNIST file {path} is truncated: {len(raw)} bytes; replace it with a fresh copy")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise UserError(
            f"MNIST file {path} has magic number {found_magic}, expected {magic}: "
            f"it is not the IDX file its name says; replace it with a fresh copy"
        )
    found_shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if found_shape != shape:
        raise UserError(f"MNIST file {path} holds shape {found_shape}, expected {shape}; replace it with a fresh copy")
    if len(raw) != header + math.prod(shape):
        raise UserError(
            f"MNIST file {path} has {len(raw) - header} data bytes, expected {math.prod(shape)}; "
            f"replace it with a fresh copy"
        )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(shape)


# Where download_mnist looks, in order; None: torchvision's MNIST mirrors.
MIRRORS: list[str] | None = None


def check_labels(path: Path, labels: torch.Tensor, classes: int = 10) -> None:
    """Refuse a label file holding a label outside 0..classes-1, naming the file and the item."""
    bad = labels >= classes
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise UserError(
            f"MNIST file {path} holds label {int(labels[index])} at item {index} (labels are 0-{classes - 1}): "
            "it is damaged; replace it with a fresh copy"
        )


def download_mnist(data_dir: Path) -> None:
    """Fetch the missing MNIST files into ``data_dir`` from torchvision's mirrors (needs a network).

    Offline, or when every mirror fails, raises one :class:`UserError` line that says where the
    files go and how to point the run at a copy.
    """
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    checksums = dict(MNIST.resources)
    for name, _, _ in FILES.values():
        if (data_dir / name).is_file():
            continue
        errors = []
        for mirror in MIRRORS if MIRRORS is not None else MNIST.mirrors:
            try:
                download_url(mirror + name, root=str(data_dir), filename=name, md5=checksums[name])
                break
            except Exception as err:  # noqa: BLE001 - try the next mirror; report all if none works
                errors.append(" ".join(str(err).split()) or type(err).__name__)
        else:
            (data_dir / name).unlink(missing_ok=True)  # a partial download is not a file to read
            raise UserError(
                f"MNIST is not in {data_dir} and could not be downloaded (offline? {errors[0] if errors else 'no mirror'}); "
                f"put the four MNIST .gz files ({', '.join(n for n, _, _ in FILES.values())}) there, or point "
                f"EXPERIMENTS_DATA (holding mnist/) or data.data_dir at a folder that holds them"
            )


def random_affine(
    images: torch.Tensor, max_shift: float, max_rotation: float, generator: torch.Generator
) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels and rotate it by up to ``max_rotation``
    degrees, all images of the batch at once (one ``grid_sample`` call, no per-sample work).

    The background is filled by border replication, which for normalised MNIST is the
    background value.
    """
    n, _, height, width = images.shape
    device = images.device
    angle = (torch.rand(n, device=device, generator=generator) * 2 - 1) * math.radians(max_rotation)
    shift = (torch.rand(n, 2, device=device, generator=generator) * 2 - 1) * max_shift
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shift[:, 0] * 2 / width], dim=1),
            torch.stack([sin, cos, shift[:, 1] * 2 / height], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class MNISTDataModule(InMemoryDataModule):
    """MNIST digits as ``(1, 28, 28)`` float images and integer labels 0-9, all held in memory.

    The 60,000 training images are split by a seeded permutation into ``60000 - val_size`` for
    training and ``val_size`` for validation (54,000 / 6,000 by default, like Keras's
    ``validation_split=0.1``); the 10,000 test images are left as they are. ``train_limit`` keeps
    only the first N training images before the split (for quick tests and smoke runs).
    ``normalize`` scales pixels to zero mean and unit deviation, else to [0, 1]. ``augment``
    randomly shifts and rotates whole training batches on their device.
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        val_size: int = 6000,
        seed: int = 0,
        normalize: bool = True,
        augment: bool = False,
        max_shift: float = 2.0,
        max_rotation: float = 10.0,
        train_limit: int | None = None,
        download: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        if train_limit is not None and not 2 <= train_limit <= 60000:
            raise ValueError(f"train_limit must be between 2 and 60000, got {train_limit}")
        available = train_limit or 60000
        if not 1 <= val_size < available:
            raise ValueError(f"val_size must be between 1 and {available - 1}, got {val_size}")
        if max_shift < 0 or max_rotation < 0:
            raise ValueError(f"max_shift and max_rotation must be >= 0, got {max_shift}, {max_rotation}")
        self.data_dir = Path(data_dir)
        self.val_size = val_size
        self.normalize = normalize
        self.augment = augment
        self.max_shift = max_shift
        self.max_rotation = max_rotation
        self.train_limit = train_limit
        self.download = download
        self._augment_generator: torch.Generator | None = None

    @property
    def spec(self) -> DataSpec:
        return DataSpec(input_shape=(1, 28, 28), output_shape=(10,), task="classification", num_classes=10)

    def prepare_data(self) -> None:
        if self.download:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            download_mnist(self.data_dir)

    def _images(self, raw: torch.Tensor) -> torch.Tensor:
        images = raw.unsqueeze(1).float().div_(255)
        return images.sub_(MEAN).div_(STD) if self.normalize else images

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:  # read once, even when fit and test both call setup
            return
        if self.download:  # setup runs without prepare_data when the module is used on its own
            self.prepare_data()
        raw = {key: read_idx(self.data_dir / name, magic, shape) for key, (name, magic, shape) in FILES.items()}
        for key in ("train_labels", "test_labels"):
            check_labels(self.data_dir / FILES[key][0], raw[key])
        images, labels = raw["train_images"], raw["train_labels"].long()
        if self.train_limit is not None:
            images, labels = images[: self.train_limit], labels[: self.train_limit]
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        train, val = order[self.val_size :], order[: self.val_size]
        self.train_set = (self._images(images[train]), labels[train])
        self.val_set = (self._images(images[val]), labels[val])
        self.test_set = (self._images(raw["test_images"]), raw["test_labels"].long())

    def on_after_batch_transfer(self, batch: Split, dataloader_idx: int) -> Split:
        trainer = self.trainer
        if not self.augment or trainer is None or not trainer.training:
            return batch
        images, labels = batch
        if self._augment_generator is None or self._augment_generator.device != images.device:
            self._augment_generator = torch.Generator(device=images.device)
        # Seeded by the batch count (restored on resume), so a resumed run draws the same shifts
        # and rotations as an uninterrupted one.
        batches_seen = trainer.global_step + 1
        self._augment_generator.manual_seed(hash((self.seed, batches_seen, trainer.global_rank)))
        return random_affine(images, self.max_shift, self.max_rotation, self._augment_generator), labels
