"""MNIST: reading the shipped IDX files, the split, augmentation, and training on small slices."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from experiments.data.mnist import FILES, MNISTDataModule, random_affine, read_idx
from experiments.errors import UserError

from conftest import MNIST_DIR


@pytest.fixture(scope="module")
def mnist() -> MNISTDataModule:
    """The full data set, read once for the module's tests."""
    datamodule = MNISTDataModule(str(MNIST_DIR))
    datamodule.setup()
    return datamodule


def copy_mnist(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, _, _ in FILES.values():
        shutil.copy(MNIST_DIR / name, folder / name)
    return folder


def test_shipped_files_read_into_tensors_of_the_declared_shapes(mnist: MNISTDataModule) -> None:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = mnist.train_set, mnist.val_set, mnist.test_set
    assert x_train.shape == (54000, 1, 28, 28) and x_val.shape == (6000, 1, 28, 28)
    assert x_test.shape == (10000, 1, 28, 28)
    assert tuple(x_train.shape[1:]) == mnist.spec.input_shape and mnist.spec.num_classes == 10
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    # Normalised with the training set's statistics.
    assert abs(float(x_train.mean())) < 0.01 and abs(float(x_train.std()) - 1) < 0.01
    # Every class is in every split, in roughly its usual share.
    for labels in (y_train, y_val, y_test):
        counts = torch.bincount(labels, minlength=10).float() / len(labels)
        assert counts.min() > 0.08 and counts.max() < 0.13
    # The test set is untouched: its first labels are MNIST's well-known 7, 2, 1, 0, 4.
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_split_is_seeded_disjoint_and_complete() -> None:
    first = MNISTDataModule(str(MNIST_DIR), train_limit=1000, val_size=100, seed=3, normalize=False)
    again = MNISTDataModule(str(MNIST_DIR), train_limit=1000, val_size=100, seed=3, normalize=False)
    other = MNISTDataModule(str(MNIST_DIR), train_limit=1000, val_size=100, seed=4, normalize=False)
    for datamodule in (first, again, other):
        datamodule.setup()
    assert torch.equal(first.val_set[0], again.val_set[0])
    assert not torch.equal(first.val_set[0], other.val_set[0])
    raw = read_idx(MNIST_DIR / FILES["train_images"][0], *FILES["train_images"][1:])[:1000]
    as_rows = {bytes(row) for row in (raw.reshape(1000, -1))}
    split_rows = [bytes((x * 255).round().to(torch.uint8).reshape(-1)) for split in (first.train_set, first.val_set) for x in split[0]]
    assert len(first.train_set[0]) == 900 and len(first.val_set[0]) == 100
    assert set(split_rows) == as_rows and len(split_rows) == 1000


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or truncated"),
        (lambda p: p.write_bytes(b"not a gzip file at all"), "corrupt or truncated"),
        (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(p.read_bytes())[4:])), "magic number"),
        (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-10])), "data bytes"),
    ],
    ids=["missing", "truncated-gzip", "not-gzip", "wrong-magic", "short-data"],
)
def test_damaged_file_gives_one_clear_error_naming_it(tmp_path: Path, damage, message: str) -> None:
    folder = copy_mnist(tmp_path)
    damaged = folder / "train-labels-idx1-ubyte.gz"
    damage(damaged)
    with pytest.raises(UserError, match=message) as caught:
        MNISTDataModule(str(folder)).setup()
    assert str(damaged) in str(caught.value) and "\n" not in str(caught.value)


def test_augmentation_shifts_whole_batches_and_is_identity_at_zero(mnist: MNISTDataModule) -> None:
    images = mnist.train_set[0][:64]
    generator = torch.Generator().manual_seed(0)
    assert torch.allclose(random_affine(images, 0.0, 0.0, generator), images, atol=1e-4)
    moved = random_affine(images, 2.0, 10.0, torch.Generator().manual_seed(0))
    again = random_affine(images, 2.0, 10.0, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and torch.equal(moved, again)
    changed = (moved - images).abs().flatten(1).mean(1)
    assert (changed > 0.01).all()  # every image moved
    # A small shift keeps the digit: the ink barely changes in amount.
    ink = lambda x: (x > 0.5).flatten(1).float().sum(1)  # noqa: E731
    assert ((ink(moved) - ink(images)).abs() / ink(images)).mean() < 0.15
