"""Datasets by name: shapes, dtypes, splits, determinism, augmentation, errors."""

from __future__ import annotations

import gzip
import re
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pruner.data import Batches, DataBundle, DatasetInfo, datasets, load_data
from pruner.sources import FASHION_MNIST_DEFAULT_ROOT, FASHION_MNIST_ENV, read_idx


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def check_batches(
    batches, channels: int, size: tuple[int, int], num_classes: int, batch_size: int
) -> int:
    n = 0
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (channels, *size)
        assert x.shape[0] == y.shape[0] <= batch_size
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
        n += len(y)
    return n


def test_names() -> None:
    assert datasets() == ["digits", "fashion-mnist", "synthetic"]


def test_digits_shapes_splits_and_normalisation() -> None:
    b = load_data("digits", batch_size=100)
    assert isinstance(b, DataBundle)
    assert b.info.in_channels == 1 and b.info.num_classes == 10 and b.info.input_size == (8, 8)
    n_train = check_batches(b.train, 1, (8, 8), 10, 100)
    n_val = check_batches(b.val, 1, (8, 8), 10, 100)
    n_test = check_batches(b.test, 1, (8, 8), 10, 100)
    assert (n_train, n_test) == (b.info.train_size, b.info.test_size)
    assert n_train + n_val + n_test == 1797
    assert n_test == 359 and n_val == round(0.1 * (1797 - 359))
    assert len(b.train) == -(-n_train // 100)  # number of batches
    x, _ = collect(b.train)
    # Normalised with the train split's own statistics.
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-2


def test_digits_determinism_and_seed_independent_test_split() -> None:
    a, b = load_data("digits", seed=3), load_data("digits", seed=3)
    for xa, xb in zip(collect(a.train), collect(b.train), strict=True):
        assert torch.equal(xa, xb)
    x1, y1 = collect(a.train)
    x2, _ = collect(a.train)  # a second pass draws a new order
    assert not torch.equal(x1, x2)
    assert torch.equal(torch.sort(y1).values, torch.sort(collect(a.train)[1]).values)
    other = load_data("digits", seed=4)
    # The test split (images, not normalisation) is the same whatever the seed.
    assert torch.equal(a.test.images, other.test.images)
    assert not torch.equal(a.val.images, other.val.images)


def test_limit_and_val_fraction() -> None:
    b = load_data("digits", limit=200, val_fraction=0.25)
    assert b.info.train_size == 150 and b.val.num_samples == 50 and b.info.test_size == 200
    none = load_data("digits", val_fraction=0.0)
    assert none.val.num_samples == 0 and list(none.val) == []
    with pytest.raises(ValueError, match="val_fraction"):
        load_data("digits", val_fraction=1.0)


def test_synthetic_options_and_val_disjoint() -> None:
    b = load_data("synthetic", channels=3, size=(8, 12), num_classes=5, count=300, batch_size=64)
    assert (b.info.in_channels, b.info.num_classes, b.info.input_size) == (3, 5, (8, 12))
    assert check_batches(b.train, 3, (8, 12), 5, 64) + b.val.num_samples == 300
    train = {bytes(img.numpy()) for img in b.train.images}
    assert not any(bytes(img.numpy()) in train for img in b.val.images)
    again = load_data("synthetic", channels=3, size=(8, 12), num_classes=5, count=300)
    assert torch.equal(b.train.images, again.train.images)
    assert not torch.equal(b.train.images, load_data("synthetic", seed=1, count=300).train.images)


def test_synthetic_classes_are_linearly_separable() -> None:
    from sklearn.linear_model import LogisticRegression

    b = load_data("synthetic", num_classes=6, count=600, size=8)

    def pooled(src):
        x, y = collect(src)
        return torch.cat([x.mean((2, 3)), x.flatten(1)], 1).numpy(), y.numpy()

    probe = LogisticRegression(max_iter=1000).fit(*pooled(b.train))
    assert probe.score(*pooled(b.test)) > 0.9


def test_augmentation_matches_a_per_sample_reference() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 2, 6, 5), dtype=torch.uint8)
    labels = torch.zeros(16, dtype=torch.int64)
    src = Batches(images, labels, (0.0, 0.0), (1 / 255, 1 / 255), batch_size=16, augment_pad=2)
    gen = torch.Generator().manual_seed(0)
    ((out, _),) = list(src)
    # Same draws as the implementation: offsets for y, then x, from the same seeded generator.
    oy = torch.randint(0, 5, (16,), generator=gen)
    ox = torch.randint(0, 5, (16,), generator=gen)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, oy[i] : oy[i] + 6, ox[i] : ox[i] + 5].float()
        assert torch.equal(out[i], ref)

    flips = Batches(
        images, labels, (0.0, 0.0), (1 / 255, 1 / 255), batch_size=16, augment_flip=True
    )
    ((out, _),) = list(flips)
    for i in range(16):
        img = images[i].float()
        assert torch.equal(out[i], img) or torch.equal(out[i], img.flip(2))


def test_augment_policy_per_dataset() -> None:
    # Digits and synthetic classes change under a flip: augment=True leaves them alone.
    plain, aug = load_data("digits", augment=False), load_data("digits", augment=True)
    assert torch.equal(collect(plain.train)[0], collect(aug.train)[0])
    assert aug.train.augment_pad == 0 and not aug.train.augment_flip


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown dataset 'cifar'.*digits, fashion-mnist, synthetic"
    ):
        load_data("cifar")
    with pytest.raises(ValueError, match="takes no options"):
        load_data("digits", channels=3)


# ---------------------------------------------------------------------------- idx and fashion-mnist


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_plain_and_gz(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "a", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")


def fake_fashion(root: Path, n_train: int = 50, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


def test_fashion_mnist_root_from_argument_and_env(tmp_path: Path, monkeypatch) -> None:
    fake_fashion(tmp_path)
    b = load_data("fashion-mnist", root=tmp_path)
    assert b.info.root == str(tmp_path) and b.info.train_size + b.val.num_samples == 50
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    assert load_data("fashion-mnist").info.test_size == 20


def test_missing_fashion_mnist_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_data("fashion-mnist", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-root" in message and FASHION_MNIST_ENV in message


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DEFAULT_ROOT).is_dir(),
    reason=f"{FASHION_MNIST_DEFAULT_ROOT} missing (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(monkeypatch) -> None:
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    b = load_data("fashion-mnist", batch_size=256, augment=True)
    assert b.info == DatasetInfo(
        "fashion-mnist", 1, 10, (28, 28), 54000, 10000, FASHION_MNIST_DEFAULT_ROOT
    )
    assert b.val.num_samples == 6000
    assert b.train.augment_pad > 0 and b.train.augment_flip
    assert b.val.augment_pad == 0 and b.test.augment_pad == 0
    assert torch.equal(torch.bincount(b.test.labels), torch.full((10,), 1000))
    x, y = next(iter(b.train))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    small = load_data("fashion-mnist", limit=500)
    assert small.info.train_size + small.val.num_samples == 500 and small.info.test_size == 500


# ---------------------------------------------------------------------------- module:callable


def test_module_callable_loaders(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "userdata.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import DataLoader, TensorDataset

            def loaders(batch_size, seed):
                g = torch.Generator().manual_seed(seed)
                def split(n):
                    x = torch.rand(n, 3, 6, 6, generator=g, dtype=torch.float64)
                    y = torch.randint(0, 7, (n,), generator=g).int()
                    return DataLoader(TensorDataset(x, y), batch_size=batch_size)
                return split(40), split(10), split(30)

            def as_mapping():
                x = torch.rand(8, 1, 4, 4)
                y = torch.arange(8) % 2
                return {"train": [(x, y)], "test": [(x, y)], "num_classes": 3}

            def not_loaders():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    b = load_data("userdata:loaders", batch_size=16, seed=1)
    assert (b.info.in_channels, b.info.input_size, b.info.train_size, b.info.test_size) == (
        3,
        (6, 6),
        40,
        30,
    )
    assert b.info.num_classes <= 7
    assert check_batches(b.train, 3, (6, 6), 7, 16) == 40
    assert check_batches(b.val, 3, (6, 6), 7, 16) == 10
    m = load_data("userdata:as_mapping")
    assert m.info.num_classes == 3 and m.info.train_size == 8
    assert collect(m.val)[0].shape == (8, 1, 4, 4)  # val falls back to test
    with pytest.raises(ValueError, match="returned int"):
        load_data("userdata:not_loaders")
    with pytest.raises(ValueError, match="no attribute"):
        load_data("userdata:missing")
    with pytest.raises(ValueError, match="cannot import"):
        load_data("no_such_module_xyz:fn")


def test_a_callable_dataset_that_cannot_train_is_named(tmp_path: Path, monkeypatch) -> None:
    """Labels outside the classes stopped training in an IndexError deep in the loss; an
    empty train split in a bare StopIteration; a generator trained one epoch and then
    nothing. Each is now a ValueError naming the dataset, the split and the batch."""
    (tmp_path / "hostiledata.py").write_text(
        textwrap.dedent(
            """
            import torch

            def _batch(lo, hi):  # one image of each label lo..hi-1
                return torch.rand(hi - lo, 1, 4, 4), torch.arange(lo, hi)

            def labels_past_classes():
                return {"train": [_batch(0, 12)], "test": [_batch(0, 10)], "num_classes": 10}

            def negative_labels():
                return [_batch(-2, 5)], [_batch(0, 5)]

            def lengths_differ():
                x, y = _batch(0, 8)
                return [(x, y[:5])], [_batch(0, 3)]

            def empty_train():
                return [], [_batch(0, 3)]

            def generator():
                return (b for b in [_batch(0, 3)]), [_batch(0, 3)]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, said in [
        (
            "labels_past_classes",
            "train split, batch 0: labels must be in 0..9 (10 classes), got 0..11",
        ),
        ("negative_labels", "labels must be in 0..4 (5 classes, the test split's highest label"),
        ("lengths_differ", "expected x (B, C, H, W) and y (B,), got (8, 1, 4, 4) and (5,)"),
    ]:
        bundle = load_data(f"hostiledata:{name}")
        with pytest.raises(ValueError, match=re.escape(f"dataset 'hostiledata:{name}', ")) as e:
            collect(bundle.train)
        assert said in str(e.value)
    with pytest.raises(ValueError, match="the train split yielded no batches"):
        load_data("hostiledata:empty_train")
    with pytest.raises(ValueError, match="the train split is a one-pass iterator"):
        load_data("hostiledata:generator")


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DEFAULT_ROOT).is_dir(),
    reason=f"{FASHION_MNIST_DEFAULT_ROOT} missing (apt-get install dataset-fashion-mnist)",
)
@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_a_damaged_fashion_mnist_file_is_named(damage: str, tmp_path: Path) -> None:
    """A truncated .gz ended in "EOFError: Compressed file ended before the end-of-stream
    marker" and a file that is no gzip in gzip.BadGzipFile, as tracebacks."""
    from .cli_helpers import PRUNERD, run

    for f in Path(FASHION_MNIST_DEFAULT_ROOT).iterdir():
        (tmp_path / f.name).symlink_to(f)
    bad = next(tmp_path.glob("train-images*.gz"))
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[:100_000] if damage == "truncated" else b"not gzip at all")
    done = run(PRUNERD, "train", "resnet20", "--data", "fashion-mnist", "--data-root",
               str(tmp_path), "--limit", "100", "--epochs", "1", "--out", str(tmp_path / "m.pt"))  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{str(bad)!r} is a damaged gzip file" in done.stderr
