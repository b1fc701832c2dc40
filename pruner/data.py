"""Built-in datasets by name, held in memory as uint8 and batched without a DataLoader.

Names:

- ``fashion-mnist``: the real Fashion-MNIST (1x28x28, 10 classes, 60k train /
  10k test), read as :mod:`pruner.sources` says.
- ``digits``: scikit-learn's bundled 8x8 digits (1x8x8, 10 classes, 1797
  images), split 80/20 into train/test with a fixed seed, so the test set is
  the same whatever ``seed`` a run uses.
- ``synthetic``: seeded random images whose classes differ by stripe
  orientation and brightness (tests only; options ``channels``, ``size``,
  ``num_classes``, ``count``).
- ``package.module:callable``: see :func:`load_callable` for the contract.

Every batch is ``(x, y)``: ``x`` float32 of shape (B, C, H, W), normalised per
channel with the train split's mean and std; ``y`` int64 of shape (B,).
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from profiler.imports import resolve_callable

from .adapt import AdaptationError, AdaptedBatches, InputAdaptation
from .config import DATASETS
from .sources import load_digits_arrays, load_fashion_mnist_arrays, make_synthetic_arrays

# Random-crop padding (pixels) for fashion-mnist: 2 to 4 is what 28x28 garments tolerate.
FASHION_MNIST_CROP_PAD = 3

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like: image shape (C, H, W), classes and split sizes (samples)."""

    name: str
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    train_size: int
    test_size: int
    root: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetInfo:
        return cls(
            name=str(d["name"]),
            in_channels=int(d["in_channels"]),
            num_classes=int(d["num_classes"]),
            input_size=tuple(d["input_size"]),
            train_size=int(d["train_size"]),
            test_size=int(d["test_size"]),
            root=d.get("root"),
        )


class Batches:
    """Re-iterable batches over uint8 images held in memory.

    ``images`` is uint8 (N, C, H, W), ``labels`` int64 (N,). Each iteration
    converts one batch at a time to normalised float32, so memory stays at one
    uint8 copy of the data. With ``shuffle`` each pass draws a new permutation
    from a generator seeded once, so a run is reproducible pass by pass.
    ``augment_pad`` > 0 enables random crops (zero padding of that many pixels)
    and ``augment_flip`` random horizontal flips.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        augment_pad: int = 0,
        augment_flip: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment_pad = int(augment_pad)
        self.augment_flip = augment_flip
        self.mean, self.std = tuple(mean), tuple(std)  # per channel, 0..1 scale
        # Normalise in the uint8 scale: (x - 255 * mean) / (255 * std).
        c = images.shape[1]
        self._shift = torch.tensor(mean, dtype=torch.float32).mul(255).view(1, c, 1, 1)
        self._scale = torch.tensor(std, dtype=torch.float32).mul(255).view(1, c, 1, 1)
        self._gen = torch.Generator().manual_seed(seed)
        self._shard: tuple[int, int] | None = None  # (rank, world) of a sharded view

    @property
    def sharding(self) -> tuple[int, int] | None:
        """(rank, world) of a view from :meth:`sharded`; None for the batches themselves."""
        return self._shard

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def rng_state(self) -> torch.Tensor:
        """The state of the generator behind shuffling and augmentation (a uint8 tensor)."""
        return self._gen.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Continue from a state :meth:`rng_state` returned: the next pass draws what it would have."""
        self._gen.set_state(state)

    def __len__(self) -> int:
        """Number of batches per pass."""
        return math.ceil(self.num_samples / self.batch_size)

    def sharded(self, rank: int, world: int) -> Batches:
        """This rank's view of the batches when ``world`` processes share each one.

        Every pass draws the permutation and the augmentation exactly as the
        unsharded batches do (the generator is shared, so its state, the resume
        file's, is the same whatever ``world``); of each batch, rank ``rank``
        takes the samples ``rank``, ``rank + world``, ... The last batch is padded
        with samples from the start of the permutation to a multiple of ``world``,
        so every rank takes as many steps; the passes have the same ``len``.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        if self.batch_size < world:
            raise ValueError(
                f"batch size {self.batch_size} cannot be shared by {world} processes: "
                f"give a batch size of at least {world}"
            )
        view = copy.copy(self)  # the same images, labels and generator
        view._shard = (rank, world)
        return view

    def __iter__(self) -> Iterator[Batch]:
        if self._shard is not None:
            yield from self._iter_shard(*self._shard)
            return
        n = self.num_samples
        order = torch.randperm(n, generator=self._gen) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.images[start : start + self.batch_size]
                y = self.labels[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                x, y = self.images[idx], self.labels[idx]
            if self.augment_pad or self.augment_flip:
                x = self._augment(x)
            yield self.normalise(x), y

    def _iter_shard(self, rank: int, world: int) -> Iterator[Batch]:
        n = self.num_samples
        order = torch.randperm(n, generator=self._gen) if self.shuffle else torch.arange(n)
        augment = self.augment_pad or self.augment_flip
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            pad = -len(idx) % world
            mine = torch.arange(rank, len(idx) + pad, world)
            picked = torch.cat([idx, order[:pad]])[mine]
            x, y = self.images[picked], self.labels[picked]
            if augment:  # drawn for the whole batch, as one process draws them
                draws = self._draw(len(idx))
                x = self._apply(x, *(torch.cat([d, d[:pad]])[mine] for d in draws))
            yield self.normalise(x), y

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) -> float32, normalised with the train split's statistics."""
        return x.float().sub_(self._shift).div_(self._scale)  # in place on the fresh float copy

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop after zero padding and random horizontal flip, per sample, in one gather.

        Offsets are drawn for rows, then columns, then the flips, from the
        batches' own generator. Each output pixel's source in the padded batch
        is computed as a flat index, with flipped samples reading their columns
        right to left, so the crop and the flip cost one ``gather`` on uint8.
        """
        return self._apply(x, *self._draw(x.shape[0]))

    def _draw(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row and column offsets and flips of ``b`` samples, drawn in that order."""
        p = self.augment_pad
        oy = torch.zeros(b, dtype=torch.int64)
        ox = torch.zeros(b, dtype=torch.int64)
        if p:
            oy = torch.randint(0, 2 * p + 1, (b,), generator=self._gen)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=self._gen)
        flip = torch.zeros(b, dtype=torch.bool)
        if self.augment_flip:
            flip = torch.rand(b, generator=self._gen) < 0.5
        return oy, ox, flip

    def _apply(
        self, x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Crop each sample at its offsets after zero padding, flipping where ``flip`` says."""
        b, c, h, w = x.shape
        p = self.augment_pad
        hp, wp = h + 2 * p, w + 2 * p
        cols = torch.arange(w).expand(b, w)
        if self.augment_flip:
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        rows = torch.arange(h)
        # (B, H, W) flat positions in the padded (Hp, Wp) plane, shared by every channel.
        index = (oy[:, None, None] + rows[None, :, None]) * wp + (ox[:, None] + cols)[:, None, :]
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        flat = padded.reshape(b, c, hp * wp)
        return flat.gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


@dataclass
class DataBundle:
    """A dataset ready to train on: its info and three re-iterable sources of (x, y) batches.

    ``val`` is a seeded held-out part of the train split: early stopping uses it,
    and the pruner uses it as its calibration split. ``test`` is never trained on.
    """

    info: DatasetInfo
    train: Iterable[Batch]
    val: Iterable[Batch]
    test: Iterable[Batch]

    def for_model(
        self,
        in_channels: int,
        input_size: tuple[int, int],
        recorded: InputAdaptation | None = None,
    ) -> tuple[DataBundle, InputAdaptation]:
        """These batches shaped for a model taking ``in_channels`` x ``input_size`` images.

        ``recorded`` is the adaptation a checkpoint was trained with; it must lead
        to the same shape. Raises :class:`AdaptationError` naming both shapes when
        the channels cannot be adapted.
        """
        info = self.info
        wanted = InputAdaptation(info.in_channels, info.input_size, in_channels, input_size)
        if recorded is not None and recorded != wanted:
            raise AdaptationError(
                f"the model was trained on images adapted {recorded.describe()}, but dataset "
                f"{info.name!r} needs {wanted.describe()}: give the dataset it was trained on"
            )
        return self.adapted(wanted), wanted

    def adapted(self, adaptation: InputAdaptation) -> DataBundle:
        """These batches as a model of another input shape takes them (see :mod:`pruner.adapt`).

        ``info`` still describes the dataset itself.
        """
        info = self.info
        if (adaptation.source_channels, adaptation.source_size) != (
            info.in_channels,
            tuple(info.input_size),
        ):
            raise AdaptationError(
                f"adaptation {adaptation.describe()} does not start from dataset {info.name!r}'s "
                f"{info.in_channels}x{info.input_size[0]}x{info.input_size[1]} images"
            )
        if adaptation.is_identity:
            return self
        train, val, test = (
            AdaptedBatches(b, adaptation) for b in (self.train, self.val, self.test)
        )
        return DataBundle(info=info, train=train, val=val, test=test)


def datasets() -> list[str]:
    """Names :func:`load_data` knows (besides ``package.module:callable``)."""
    return list(DATASETS)


# ---------------------------------------------------------------------------- splitting and batching


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale, exactly, from a 256-bin histogram per channel."""
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64) / 255.0
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(max(float(var.sqrt()), 1e-3))  # constant images must not divide by zero
    return tuple(means), tuple(stds)


def _subset(n: int, limit: int | None, seed: int) -> torch.Tensor | None:
    """Seeded random indices capping n samples at ``limit``, or None for all of them."""
    if limit is None or limit >= n:
        return None
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


def bundle_from_arrays(
    name: str,
    train_images: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_images: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    num_classes: int,
    batch_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment_pad: int = 0,
    augment_flip: bool = False,
    limit: int | None = None,
    root: str | None = None,
) -> DataBundle:
    """A DataBundle from uint8 images, (N, H, W) or (N, C, H, W), and integer labels.

    ``limit`` caps the train and the test split at that many samples each (a
    seeded random subset); the val split is then carved out of what is left of
    train: ``round(val_fraction * n_train)`` samples, at least one when
    ``val_fraction`` > 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_x, train_y = _as_tensors(train_images, train_labels, limit, seed)
    test_x, test_y = _as_tensors(test_images, test_labels, limit, seed + 1)
    val_idx, fit_idx = _val_split(len(train_y), val_fraction, seed + 2)
    fit_x, fit_y = train_x[fit_idx], train_y[fit_idx]
    # Normalise with the statistics of what the model trains on, never of val or test.
    mean, std = _channel_stats(fit_x)

    common = {"mean": mean, "std": std, "batch_size": batch_size}
    info = DatasetInfo(
        name=name,
        in_channels=int(train_x.shape[1]),
        num_classes=int(num_classes),
        input_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        train_size=len(fit_y),
        test_size=len(test_y),
        root=root,
    )
    augment = {"augment_pad": augment_pad, "augment_flip": augment_flip}
    return DataBundle(
        info=info,
        train=Batches(fit_x, fit_y, shuffle=True, seed=seed, **augment, **common),
        val=Batches(train_x[val_idx], train_y[val_idx], **common),
        test=Batches(test_x, test_y, **common),
    )


def _as_tensors(
    images: Any, labels: Any, limit: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, H, W) and int64 labels (N,), cut to a seeded ``limit``-subset."""
    x = torch.as_tensor(np.asarray(images, dtype=np.uint8))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x, y = x.contiguous(), torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if (keep := _subset(len(y), limit, seed)) is not None:
        x, y = x[keep], y[keep]
    return x, y


def _val_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(val indices, fit indices) of ``n`` training samples, each sorted; at least one
    val sample when ``val_fraction`` > 0, and at least one left to fit on."""
    n_val = min(n - 1, max(1, round(val_fraction * n))) if val_fraction > 0 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_val].sort().values, order[n_val:].sort().values


# ---------------------------------------------------------------------------- module:callable


class _Converted:
    """Re-iterable view of a user's loader that yields (float32 x, int64 y), checked: a
    label outside 0..num_classes-1 would stop training in an IndexError deep in the loss.
    (Images are not scanned for NaN, a pass over every batch: the training loss is
    checked instead, see ``pruner.train``.)"""

    def __init__(
        self, source: Iterable[Any], where: str, num_classes: int, classes_from: str = ""
    ) -> None:
        self.source, self.where, self.num_classes = source, where, num_classes
        self.classes_from = classes_from  # how num_classes was found, when not given

    def __iter__(self) -> Iterator[Batch]:
        for i, item in enumerate(self.source):
            x, y = torch.as_tensor(item[0]).float(), torch.as_tensor(item[1]).long()
            self._check(i, x, y)
            yield x, y

    def _check(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"{self.where}, batch {i}: {what}")

        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise bad(
                f"expected x (B, C, H, W) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        n = self.num_classes
        if len(y) and not (int(y.min()) >= 0 and int(y.max()) < n):
            raise bad(
                f"labels must be in 0..{n - 1} ({n} classes{self.classes_from}), got "
                f"{int(y.min())}..{int(y.max())}"
            )

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]


def _count(loader: Iterable[Any]) -> int:
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(len(item[1]) for item in loader)


def load_callable(
    spec: str, root: str | None = None, batch_size: int = 128, seed: int = 0
) -> DataBundle:
    """Data from ``package.module:callable``.

    Contract: the callable is called with those of the keyword arguments
    ``batch_size``, ``seed`` and ``root`` that its signature accepts, and returns

    - a :class:`DataBundle`, used as is; or
    - a mapping with ``train``, ``test`` and optionally ``val`` and ``num_classes``; or
    - a tuple ``(train, val, test)`` or ``(train, test)``.

    Each of train/val/test must be re-iterable (a ``DataLoader`` is; a
    generator is not) and yield ``(x, y)`` with x of shape (B, C, H, W) and y
    integer class labels of shape (B,). Without ``val``, the test loader doubles
    as val (early stopping then sees the test set: give a val loader to avoid
    that). Without ``num_classes`` it is ``max(label) + 1`` over test. Batches
    are converted to float32 / int64 as they are drawn; normalisation,
    augmentation and ``limit`` are the callable's own business.
    """
    if ":" not in spec:
        raise ValueError(
            f"dataset {spec!r} is not one of {', '.join(datasets())} nor of the form "
            "'package.module:callable'"
        )
    # The rule models follow too: one name defined in the module, no attribute path.
    obj = resolve_callable(spec, "dataset")
    offered = {"batch_size": batch_size, "seed": seed, "root": root}
    params = inspect.signature(obj).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    result = obj(**{k: v for k, v in offered.items() if takes_any or k in params})
    if isinstance(result, DataBundle):
        return result
    return _bundle_from_splits(spec, root, *_returned_splits(spec, result))


def _returned_splits(spec: str, result: Any) -> tuple[Any, Any, Any, int | None]:
    """(train, val, test, num_classes or None) from what a dataset callable returned."""
    if isinstance(result, Mapping):
        if "train" not in result or "test" not in result:
            raise ValueError(
                f"dataset {spec!r}: the returned mapping needs 'train' and 'test' keys"
            )
        test = result["test"]
        return result["train"], result.get("val", test), test, result.get("num_classes")
    if isinstance(result, tuple | list) and len(result) in (2, 3):
        train, *rest = result
        val, test = (rest[0], rest[0]) if len(rest) == 1 else rest
        return train, val, test, None
    raise ValueError(
        f"dataset {spec!r}: the callable returned {type(result).__name__}; expected a "
        "DataBundle, a mapping with 'train'/'test', or a tuple (train, [val,] test)"
    )


def _bundle_from_splits(
    spec: str, root: str | None, train: Any, val: Any, test: Any, num_classes: int | None
) -> DataBundle:
    """A DataBundle of re-iterable loaders; shapes read off the first training batch."""
    for split, name in ((train, "train"), (val, "val"), (test, "test")):
        if isinstance(split, Iterator):  # a generator: empty from its second pass on
            raise ValueError(
                f"dataset {spec!r}: the {name} split is a one-pass iterator "
                f"({type(split).__name__}); return something iterable again each epoch, "
                "such as a DataLoader or a list of batches"
            )
    first = next(iter(train), None)
    if first is None:
        raise ValueError(f"dataset {spec!r}: the train split yielded no batches")
    first_x = torch.as_tensor(first[0])
    if first_x.dim() != 4:
        raise ValueError(
            f"dataset {spec!r}: batches must be (B, C, H, W), got {tuple(first_x.shape)}"
        )
    classes_from = ""
    if num_classes is None:
        highest = [int(torch.as_tensor(item[1]).max()) for item in test if len(item[1])]
        if not highest:
            raise ValueError(f"dataset {spec!r}: the test split yielded no labels")
        num_classes = 1 + max(highest)
        classes_from = (
            ", the test split's highest label + 1: return num_classes with the splits if "
            "the test split lacks a class"
        )
    train, val, test = (
        _Converted(split, f"dataset {spec!r}, {name} split", int(num_classes), classes_from)
        for split, name in ((train, "train"), (val, "val"), (test, "test"))
    )
    info = DatasetInfo(
        name=spec,
        in_channels=int(first_x.shape[1]),
        num_classes=int(num_classes),
        input_size=(int(first_x.shape[2]), int(first_x.shape[3])),
        train_size=_count(train.source),
        test_size=_count(test.source),
        root=root,
    )
    return DataBundle(info=info, train=train, val=val, test=test)


# ---------------------------------------------------------------------------- the public entry


def _synthetic(options: dict[str, Any], seed: int, **split: Any) -> DataBundle:
    """The synthetic dataset: ``count`` train images (1024) and a fifth as many test images."""
    options = dict(options)
    num_classes = int(options.get("num_classes", 4))
    count = int(options.pop("count", 1024))
    # Train and test come from different seeds of the same generator: no shared images.
    tr_x, tr_y = make_synthetic_arrays(count=count, seed=seed, class_seed=seed, **options)
    te_x, te_y = make_synthetic_arrays(
        count=max(1, count // 5), seed=seed + 10_000, class_seed=seed, **options
    )
    return bundle_from_arrays(
        "synthetic", tr_x, tr_y, te_x, te_y, num_classes=num_classes, seed=seed, **split
    )


def load_data(
    name: str,
    root: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = False,
    limit: int | None = None,
    crop_pad: int = FASHION_MNIST_CROP_PAD,
    **options: Any,
) -> DataBundle:
    """Load a dataset by name (see the module docstring) as a :class:`DataBundle`.

    ``augment`` turns on the dataset's own training augmentation: random crop
    (``crop_pad`` pixels of zero padding, 0 for none) and horizontal flip for
    fashion-mnist, on whole batches at once; none for digits and synthetic,
    where a flip would change the class. ``limit`` caps
    train and test at that many samples each for quick runs. ``options`` go to
    the synthetic generator (``channels``, ``size``, ``num_classes``, ``count``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if crop_pad < 0:
        raise ValueError(f"crop_pad must be >= 0 pixels, got {crop_pad}")
    if options and name != "synthetic":
        raise ValueError(f"dataset {name!r} takes no options, got {sorted(options)}")
    split = {"batch_size": batch_size, "seed": seed, "val_fraction": val_fraction, "limit": limit}
    if name == "fashion-mnist":
        tr_x, tr_y, te_x, te_y, where = load_fashion_mnist_arrays(root)
        return bundle_from_arrays(
            name,
            tr_x,
            tr_y,
            te_x,
            te_y,
            num_classes=10,
            augment_pad=crop_pad if augment else 0,
            augment_flip=augment,
            root=str(where),
            **split,
        )
    if name == "digits":
        tr_x, tr_y, te_x, te_y = load_digits_arrays()
        return bundle_from_arrays(name, tr_x, tr_y, te_x, te_y, num_classes=10, **split)
    if name == "synthetic":
        return _synthetic(options, **split)
    if ":" in name:
        return load_callable(
            name, root=None if root is None else str(root), batch_size=batch_size, seed=seed
        )
    raise ValueError(
        f"unknown dataset {name!r}: choose one of {', '.join(datasets())} "
        "or give 'package.module:callable'"
    )
