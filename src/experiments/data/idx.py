"""Image classification data in the IDX format of MNIST (gzipped files of unsigned bytes), held in
memory as tensors: MNIST by default, and any other IDX data set (Fashion-MNIST, KMNIST, ...) from a
config alone (``conf/data/fashion_mnist.yaml``)."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.data.base import InMemoryDataModule, Split, refuse_non_file
from experiments.data.spec import DataSpec
from experiments.errors import UserError

# The four files of a data set, by role. MNIST's names are torchvision's; Fashion-MNIST uses the same.
ROLES = ("train_images", "train_labels", "test_images", "test_labels")
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# IDX magic numbers: 0x08 (unsigned bytes) and the number of dimensions.
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801
# Mean and standard deviation of MNIST's training pixels scaled to [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
# torchvision's MNIST mirrors and checksums (download needs a network; tests never download).
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_ATTRIBUTION = "MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges; CC BY-SA 3.0"


def read_idx(path: Path, magic: int, item_shape: Sequence[int] | None = None, dataset: str = "IDX") -> torch.Tensor:
    """A gzipped IDX file of unsigned bytes as a uint8 tensor of the shape its header gives.

    ``item_shape``, when given, is the expected shape of one item (``(28, 28)`` for MNIST images).
    Any fault (missing, not gzip, truncated, wrong magic number or shape) raises one
    :class:`UserError` that names the file. Our own reader rather than torchvision's because
    torchvision's fails with bare struct/assert errors that don't name the file.
    """
    refuse_non_file(path, f"{dataset} {path.name}")
    if not path.is_file():
        raise UserError(
            f"{dataset} file {path} is missing; point data.data_dir at the folder holding the four "
            f"{dataset} .gz files, or set data.download=true to fetch them"
        )
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{dataset} file {path} is corrupt or truncated ({err}); replace it with a fresh copy"
        ) from None
    dims = magic & 0xFF
    header = 4 + 4 * dims
    if len(raw) < header:
        raise UserError(f"{dataset} file {path} is truncated: {len(raw)} bytes; replace it with a fresh copy")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise UserError(
            f"{dataset} file {path} has magic number {found_magic}, expected {magic}: "
            f"it is not the IDX file its name says; replace it with a fresh copy"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if item_shape is not None and shape[1:] != tuple(item_shape):
        raise UserError(
            f"{dataset} file {path} holds items of shape {shape[1:]}, expected {tuple(item_shape)}; "
            "replace it with a fresh copy, or set data.image_shape to its shape"
        )
    if shape[0] == 0:
        raise UserError(f"{dataset} file {path} holds 0 items (a valid header, no data); replace it with a fresh copy")
    if len(raw) != header + math.prod(shape):
        raise UserError(
            f"{dataset} file {path} has {len(raw) - header} data bytes, expected {math.prod(shape)}; "
            f"replace it with a fresh copy"
        )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(shape)


def check_labels(path: Path, labels: torch.Tensor, classes: int = 10, dataset: str = "IDX") -> None:
    """Refuse a label file holding a label outside 0..classes-1, naming the file and the item."""
    bad = labels >= classes
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise UserError(
            f"{dataset} file {path} holds label {int(labels[index])} at item {index} (labels are 0-{classes - 1}): "
            "it is damaged; replace it with a fresh copy"
        )


def download_idx(
    data_dir: Path,
    files: Sequence[str],
    mirrors: Sequence[str],
    md5: Mapping[str, str],
    dataset: str,
    attribution: str = "",
) -> None:
    """Fetch the missing ``files`` into ``data_dir`` from the first mirror that has them (needs a
    network), checked against their ``md5`` where given, as torchvision does.

    Offline, or when every mirror fails, raises one :class:`UserError` line that says where the
    files go and how to point the run at a copy.
    """
    from torchvision.datasets.utils import download_url

    for name in files:
        refuse_non_file(data_dir / name, f"{dataset} {name}")
    missing = [name for name in files if not (data_dir / name).is_file()]
    if missing and attribution:
        print(f"downloading {dataset} ({attribution}) into {data_dir}", flush=True)
    for name in missing:
        errors = []
        for mirror in mirrors:
            try:
                download_url(mirror + name, root=str(data_dir), filename=name, md5=md5.get(name))
                break
            except Exception as err:  # noqa: BLE001 - try the next mirror; report all if none works
                errors.append(" ".join(str(err).split()) or type(err).__name__)
        else:
            (data_dir / name).unlink(missing_ok=True)  # a partial download is not a file to read
            raise UserError(
                f"{dataset} is not in {data_dir} and could not be downloaded (offline? {errors[0] if errors else 'no mirror'}); "
                f"put the four {dataset} .gz files ({', '.join(files)}) there, or point "
                f"EXPERIMENTS_DATA (holding {data_dir.name}/) or data.data_dir at a folder that holds them"
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


class IDXDataModule(InMemoryDataModule):
    """Images of an IDX data set as ``(1, H, W)`` float images and integer labels, all held in memory;
    by default MNIST's digits (``(1, 28, 28)``, labels 0-9).

    The training images are split by a seeded permutation into ``N - val_size`` for training and
    ``val_size`` for validation (MNIST: 54,000 / 6,000 by default, like Keras's
    ``validation_split=0.1``); the test images are left as they are. ``train_limit`` keeps only the
    first N training images before the split (for quick tests and smoke runs). ``normalize`` scales
    pixels to zero mean and unit deviation with ``mean`` and ``std`` (of the training pixels in
    [0, 1]), else to [0, 1]. ``augment`` randomly shifts and rotates whole training batches on
    their device.

    What makes the data set itself: ``dataset`` (its name in messages), ``files`` (the file of each
    role: ``train_images``, ``train_labels``, ``test_images``, ``test_labels``), ``image_shape``,
    ``mean`` and ``std``, ``classes`` (their names; their number sizes the model), and for
    ``download=true`` its ``mirrors``, ``md5`` checksums and the ``attribution`` printed when
    fetching it.
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
        dataset: str = "MNIST",
        files: Mapping[str, str] = MNIST_FILES,
        image_shape: Sequence[int] = (28, 28),
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
        classes: Sequence[str] = MNIST_CLASSES,
        mirrors: Sequence[str] = MNIST_MIRRORS,
        md5: Mapping[str, str] = MNIST_MD5,
        attribution: str = MNIST_ATTRIBUTION,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        if train_limit is not None and train_limit < 2:
            raise ValueError(f"train_limit must be at least 2, got {train_limit}")
        if val_size < 1:
            raise ValueError(f"val_size must be at least 1, got {val_size}")
        if train_limit is not None and val_size >= train_limit:
            raise ValueError(f"val_size must be between 1 and {train_limit - 1}, got {val_size}")
        if sorted(files) != sorted(ROLES):
            raise ValueError(f"files must name the file of each of {', '.join(ROLES)}, got {', '.join(files)}")
        if len(classes) < 2:
            raise ValueError(f"classes must name at least 2 classes, got {list(classes)}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if len(image_shape) != 2 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be [height, width], got {list(image_shape)}")
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
        self.dataset = dataset
        self.files = dict(files)
        self.image_shape = tuple(image_shape)
        self.mean, self.std = mean, std
        self.classes = list(classes)
        self.mirrors = list(mirrors)
        self.md5 = dict(md5)
        self.attribution = attribution
        self._augment_generator: torch.Generator | None = None

    @property
    def spec(self) -> DataSpec:
        classes = len(self.classes)
        return DataSpec(
            input_shape=(1, *self.image_shape), output_shape=(classes,), task="classification", num_classes=classes
        )

    def prepare_data(self) -> None:
        if self.download:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            files = [self.files[role] for role in ROLES]
            download_idx(self.data_dir, files, self.mirrors, self.md5, self.dataset, self.attribution)

    def _images(self, raw: torch.Tensor) -> torch.Tensor:
        images = raw.unsqueeze(1).float().div_(255)
        return images.sub_(self.mean).div_(self.std) if self.normalize else images

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:  # read once, even when fit and test both call setup
            return
        if self.download:  # setup runs without prepare_data when the module is used on its own
            self.prepare_data()
        raw = {
            role: read_idx(self.data_dir / self.files[role], *self._format(role), dataset=self.dataset)
            for role in ROLES
        }
        for split in ("train", "test"):
            images, labels = raw[f"{split}_images"], raw[f"{split}_labels"]
            check_labels(self.data_dir / self.files[f"{split}_labels"], labels, len(self.classes), self.dataset)
            if len(images) != len(labels):
                raise UserError(
                    f"{self.dataset} files {self.files[f'{split}_images']} and {self.files[f'{split}_labels']} in "
                    f"{self.data_dir} hold {len(images)} images but {len(labels)} labels; replace them with fresh copies"
                )
        images, labels = raw["train_images"], raw["train_labels"].long()
        if self.train_limit is not None:
            images, labels = images[: self.train_limit], labels[: self.train_limit]
        if self.val_size >= len(images):
            raise UserError(
                f"data.val_size={self.val_size} leaves no training images of the {len(images)} in {self.dataset}'s "
                "training files; pass a smaller data.val_size"
            )
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        train, val = order[self.val_size :], order[: self.val_size]
        self.train_set = (self._images(images[train]), labels[train])
        self.val_set = (self._images(images[val]), labels[val])
        self.test_set = (self._images(raw["test_images"]), raw["test_labels"].long())

    def _format(self, role: str) -> tuple[int, tuple[int, ...]]:
        """The IDX magic number and item shape of a file of ``role``."""
        return (IMAGES_MAGIC, self.image_shape) if role.endswith("images") else (LABELS_MAGIC, ())

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
