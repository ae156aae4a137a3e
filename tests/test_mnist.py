"""MNIST: reading the shipped IDX files, the split, augmentation, and training on small slices."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from experiments.data import InMemoryLoader
from experiments.data.idx import IMAGES_MAGIC, MNIST_FILES, IDXDataModule, random_affine, read_idx
from experiments.errors import UserError

from conftest import MNIST_DIR


@pytest.fixture(scope="module")
def mnist() -> IDXDataModule:
    """The full data set, read once for the module's tests."""
    datamodule = IDXDataModule(str(MNIST_DIR))
    datamodule.setup()
    return datamodule


def copy_mnist(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in MNIST_FILES.values():
        shutil.copy(MNIST_DIR / name, folder / name)
    return folder


def test_shipped_files_read_into_tensors_of_the_declared_shapes(mnist: IDXDataModule) -> None:
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
    first = IDXDataModule(str(MNIST_DIR), train_limit=1000, val_size=100, seed=3, normalize=False)
    again = IDXDataModule(str(MNIST_DIR), train_limit=1000, val_size=100, seed=3, normalize=False)
    other = IDXDataModule(str(MNIST_DIR), train_limit=1000, val_size=100, seed=4, normalize=False)
    for datamodule in (first, again, other):
        datamodule.setup()
    assert torch.equal(first.val_set[0], again.val_set[0])
    assert not torch.equal(first.val_set[0], other.val_set[0])
    raw = read_idx(MNIST_DIR / MNIST_FILES["train_images"], IMAGES_MAGIC, (28, 28))[:1000]
    as_rows = {bytes(row) for row in (raw.reshape(1000, -1))}
    split_rows = [
        bytes((x * 255).round().to(torch.uint8).reshape(-1))
        for split in (first.train_set, first.val_set)
        for x in split[0]
    ]
    assert len(first.train_set[0]) == 900 and len(first.val_set[0]) == 100
    assert set(split_rows) == as_rows and len(split_rows) == 1000


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or truncated"),
        (lambda p: p.write_bytes(b"not a gzip file at all"), "corrupt or truncated"),
        (
            lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(p.read_bytes())[4:])),
            "magic number",
        ),
        (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-10])), "data bytes"),
    ],
    ids=["missing", "truncated-gzip", "not-gzip", "wrong-magic", "short-data"],
)
def test_damaged_file_gives_one_clear_error_naming_it(tmp_path: Path, damage, message: str) -> None:
    folder = copy_mnist(tmp_path)
    damaged = folder / "train-labels-idx1-ubyte.gz"
    damage(damaged)
    with pytest.raises(UserError, match=message) as caught:
        IDXDataModule(str(folder)).setup()
    assert str(damaged) in str(caught.value) and "\n" not in str(caught.value)


def test_augmentation_shifts_whole_batches_and_is_identity_at_zero(mnist: IDXDataModule) -> None:
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


def test_loader_yields_every_sample_once_per_epoch_in_a_seeded_order() -> None:
    data = torch.arange(1000)
    loader = InMemoryLoader(data, batch_size=32, shuffle=True, seed=7)
    epochs = [torch.cat([batch for (batch,) in loader]) for _ in range(2)]
    assert all(sorted(epoch.tolist()) == list(range(1000)) for epoch in epochs)
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch
    replay = InMemoryLoader(data, batch_size=32, shuffle=True, seed=7)
    assert torch.equal(torch.cat([batch for (batch,) in replay]), epochs[0])
    assert len(loader) == 32 and [len(b) for (b,) in loader][-1] == 1000 - 31 * 32


@pytest.mark.parametrize("world_size", [2, 3])
def test_loader_shards_are_disjoint_and_equally_long_under_ddp(world_size: int) -> None:
    data = torch.arange(1000)
    shards = [
        torch.cat(
            [b for (b,) in InMemoryLoader(data, batch_size=16, shuffle=True, seed=1, rank=r, world_size=world_size)]
        )
        for r in range(world_size)
    ]
    lengths = {len(InMemoryLoader(data, batch_size=16, rank=r, world_size=world_size)) for r in range(world_size)}
    assert len(lengths) == 1 and {len(s) for s in shards} == {1000 // world_size}
    together = torch.cat(shards)
    assert len(set(together.tolist())) == len(together)  # disjoint


def test_train_without_arguments_is_the_primer_mnist_recipe(compose_train) -> None:
    cfg = compose_train()
    assert cfg.name == "mnist_mlp" and cfg.data._target_.endswith("IDXDataModule")
    assert list(cfg.model.hidden) == [128] and cfg.model.activation == "relu"
    assert cfg.data.batch_size == 32 and cfg.data.val_size == 6000
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.001
    assert cfg.trainer.max_epochs == 5


SLICE = ["data.train_limit=3000", "data.val_size=500", "logger=none", "callbacks.history.verbose=false"]


@pytest.mark.parametrize(
    ("experiment", "extra", "floor"),
    [
        ("mnist_mlp", ["trainer.max_epochs=2"], 0.80),
        (
            "mnist_cnn",
            [
                "trainer.max_epochs=2",
                "data.batch_size=64",
                "data.augment=true",
                "model.channels=[8,16]",
                "model.dense_size=32",
            ],
            0.80,
        ),
        ("mnist_lstm", ["trainer.max_epochs=2", "data.batch_size=32", "model.hidden_size=64"], 0.50),
    ],
)
def test_each_model_learns_mnist_from_a_slice(compose_train, experiment: str, extra: list[str], floor: float) -> None:
    from experiments.train import train

    metrics = train(compose_train(f"experiment={experiment}", *SLICE, *extra))
    # Chance is 10%; a few hundred steps on 2,500 images should clear the floor by far.
    assert metrics["test"]["test/acc"] > floor, metrics
    assert metrics["epochs"] == 2


def test_resuming_from_the_last_checkpoint_equals_training_straight_through(tmp_path: Path) -> None:
    from experiments.train import train

    from conftest import compose_config

    common = ["experiment=mnist_mlp", *SLICE, "data.train_limit=1200", "data.val_size=200", "model.hidden=[32]"]
    straight = train(compose_config("train", [*common, "trainer.max_epochs=3"], tmp_path / "straight"))
    train(compose_config("train", [*common, "trainer.max_epochs=1"], tmp_path / "first"))
    resumed = train(
        compose_config(
            "train",
            [*common, "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"],
            tmp_path / "resumed",
        )
    )
    assert resumed["epochs"] == straight["epochs"] == 3
    assert resumed["test"] == straight["test"] and resumed["best"] == straight["best"]
    weights = [
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for run in (tmp_path / "straight", tmp_path / "resumed")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # Every epoch trains on every batch: Lightning stops after len(loader) batches without
    # exhausting the loader's generator, and the next epoch must still start at its first batch.
    checkpoint = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3 * -(-1000 // 32)


@pytest.mark.slow
def test_primer_recipe_reaches_its_accuracy(mnist_mlp_run: tuple[dict, Path]) -> None:
    metrics, _ = mnist_mlp_run  # experiment=mnist_mlp as it ships (shared with test_diagnosis)
    assert metrics["status"] == "completed" and metrics["epochs"] == 5
    assert metrics["test"]["test/acc"] >= 0.973, metrics


def _write_idx(path: Path, values: torch.Tensor) -> None:
    """An IDX file of unsigned bytes, gzipped, as the MNIST-format data sets ship them."""
    header = (0x0800 + values.dim()).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in values.shape)
    path.write_bytes(gzip.compress(header + values.to(torch.uint8).numpy().tobytes()))


def test_fashion_mnist_is_one_yaml_file_and_trains_end_to_end(compose_train, tmp_path: Path) -> None:
    """conf/data/fashion_mnist.yaml alone makes Fashion-MNIST: the IDX reader with its files,
    statistics and class names. Its files are not shipped (nor reachable offline), so small fake
    ones under Fashion-MNIST's file names stand in for them."""
    from experiments.train import train

    folder = tmp_path / "fashion"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 80), ("t10k", 20)):
        labels = torch.arange(count) % 10
        # Each class a brighter picture than the last: learnable in a few steps.
        images = labels.reshape(-1, 1, 1) * 25 + torch.randint(0, 10, (count, 28, 28), generator=generator)
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    cfg = compose_train(
        "data=fashion_mnist",
        f"data.data_dir={folder}",
        "data.val_size=20",
        "data.batch_size=20",
        "model.hidden=[16]",
        "optimizer.lr=0.01",
        "trainer.max_epochs=3",
        "logger=none",
        "callbacks.history.verbose=false",
    )
    assert cfg.name == "fashion_mnist_mlp" and (cfg.data.mean, cfg.data.std) == (0.2860, 0.3530)
    assert cfg.data.classes[0] == "T-shirt/top" and cfg.monitor == "val/acc"  # the rest is mnist.yaml's
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_FILES.values())
    metrics = train(cfg)
    assert metrics["status"] == "completed" and metrics["test"]["test/acc"] > 0.2
