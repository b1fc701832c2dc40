"""Where the built-in datasets' images come from, as uint8 arrays.

- Fashion-MNIST: the four idx files (``.gz`` or plain) in
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), or
  in the directory given by ``root`` or ``$PRUNERD_FASHION_MNIST``;
- digits: scikit-learn's bundled 8x8 digits, split 80/20 with a fixed seed;
- synthetic: seeded stripes whose orientation and brightness depend on the class.

:mod:`pruner.data` splits, normalises and batches them.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "PRUNERD_FASHION_MNIST"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# The train/test split of digits never depends on the run's seed: test accuracy stays comparable.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def fashion_mnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where Fashion-MNIST is read from: ``root``, else ``$PRUNERD_FASHION_MNIST``, else the Debian path."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one idx file (gzip-compressed when the name ends in ``.gz``) of unsigned bytes.

    Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of
    dimensions, one big-endian int32 per dimension, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = bytearray(f.read())  # writable, so torch can wrap the array without a copy
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(
            f"{str(path)!r} is a damaged gzip file ({e}); download or install it again"
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{str(path)!r} is not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{str(path)!r}: idx type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(
            f"{str(path)!r}: header says {dims} = {expected} bytes, the file holds {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist_arrays(
    root: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Path]:
    """Fashion-MNIST as uint8 arrays: train images (60000, 28, 28), labels (60000,), test likewise (10000)."""
    where = fashion_mnist_root(root)
    found = {key: _find_idx(where, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] + ".gz" for k, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"fashion-mnist: {str(where)!r} lacks {', '.join(missing)}. "
            "Install it with `apt-get install dataset-fashion-mnist` "
            f"(puts the files in {FASHION_MNIST_DEFAULT_ROOT}), or point --data-root or "
            f"${FASHION_MNIST_ENV} at a directory holding the four idx files"
        )
    arrays = {k: read_idx(p) for k, p in found.items() if p is not None}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"fashion-mnist in {str(where)!r}: {split} images {images.shape} and labels "
                f"{labels.shape} do not match"
            )
    return (
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        where,
    )


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (N, 8, 8) on the 0..255 scale, split 80/20 with a fixed seed."""
    # Copies: callers may own and modify what they get; the cached originals stay intact.
    return tuple(a.copy() for a in _digits_arrays())  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    # Pixel values are 0..16; 255/16 maps them onto the usual 8-bit range exactly at both ends.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def make_synthetic_arrays(
    channels: int = 1,
    size: int | tuple[int, int] = (16, 16),
    num_classes: int = 4,
    count: int = 1024,
    seed: int = 0,
    class_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded uint8 images (count, channels, H, W) and int64 labels with class-dependent structure.

    Class k has stripes at angle pi * k / num_classes, a random phase (so the
    class survives global average pooling of oriented filters) and its own
    brightness per channel (drawn from ``class_seed``, so splits drawn with
    different ``seed`` share the classes); Gaussian noise on top. A small CNN learns it in one
    epoch and linear probes on pooled features separate the classes.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if min(channels, h, w, num_classes, count) < 1:
        raise ValueError(
            f"synthetic: channels, size, num_classes and count must be >= 1, got "
            f"{channels}, {(h, w)}, {num_classes}, {count}"
        )
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=count).astype(np.int64)
    angle = np.pi * labels / num_classes
    phase = rng.uniform(0, 2 * np.pi, size=count)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    freq = 2 * np.pi / 4.0  # a 4-pixel period is visible even on 8x8 images
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    stripes = np.cos(freq * proj + phase[:, None, None])  # (count, H, W)
    # Evenly spaced levels, shuffled per channel: no two classes share a brightness by chance.
    class_rng = np.random.default_rng(class_seed)
    levels = np.linspace(-40, 40, num_classes) if num_classes > 1 else np.zeros(1)
    table = np.stack([class_rng.permutation(levels) for _ in range(channels)], axis=1)
    brightness = table[labels]  # (count, C)
    images = (
        128.0
        + 60.0 * stripes[:, None]
        + brightness[:, :, None, None]
        + rng.normal(0, 20, size=(count, channels, h, w))
    )
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels
