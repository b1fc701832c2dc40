"""Batched augmentation: shapes, labels kept in step, flips that are exact mirror images, padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruner.data import Batches, load_data
from pruner.sources import FASHION_MNIST_DEFAULT_ROOT

UNIT = ((0.0,), (1 / 255,))  # normalisation that leaves uint8 values as they are


def images_with_ids(n: int = 64, h: int = 7, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose pixel (0, 0) holds the image id and whose columns differ."""
    x = torch.arange(h * w, dtype=torch.uint8).view(1, 1, h, w).repeat(n, 1, 1, 1) + 10
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x, torch.arange(n) % 10


def test_flip_mirrors_whole_images_and_keeps_labels_in_step() -> None:
    images, labels = images_with_ids()
    batches = Batches(images, labels, *UNIT, batch_size=16, shuffle=True, augment_flip=True)
    flipped = kept = 0
    for x, y in batches:
        assert x.shape == (len(y), 1, 7, 5) and x.dtype == torch.float32
        for img, label in zip(x, y):
            as_is = [i for i in range(64) if torch.equal(img, images[i].float())]
            mirrored = [i for i in range(64) if torch.equal(img, images[i].float().flip(2))]
            assert len(as_is) + len(mirrored) == 1  # one source image, whole, either way round
            source = (as_is or mirrored)[0]
            assert int(label) == int(labels[source])
            flipped += bool(mirrored)
            kept += bool(as_is)
    assert flipped + kept == 64 and 16 <= flipped <= 48  # about half, seeded


def test_crop_shapes_and_zero_padding() -> None:
    images = torch.full((200, 1, 6, 6), 255, dtype=torch.uint8)
    labels = torch.zeros(200, dtype=torch.int64)
    batches = Batches(images, labels, *UNIT, batch_size=50, augment_pad=2)
    x = torch.cat([b for b, _ in batches])
    assert x.shape == (200, 1, 6, 6)
    # Every crop keeps a 2x2 centre of the image and shows at most 2 rows/cols of zero padding.
    assert bool((x[:, :, 2:4, 2:4] == 255).all())
    zero_rows = (x == 0).all(3).sum(2).flatten()
    assert int(zero_rows.max()) == 2 and int(zero_rows.min()) == 0
    assert len({tuple(img.flatten().tolist()) for img in x}) > 10  # offsets vary per image


def test_augmentation_is_seeded_and_rng_state_round_trips() -> None:
    images, labels = images_with_ids()

    def make() -> Batches:
        return Batches(
            images, labels, *UNIT, 16, shuffle=True, seed=5, augment_pad=1, augment_flip=True
        )

    a, b = make(), make()
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    state = a.rng_state()
    first = [x for x, _ in a]
    a.set_rng_state(state)
    assert all(torch.equal(p, q) for p, q in zip(first, (x for x, _ in a)))


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DEFAULT_ROOT).is_dir(),
    reason=f"{FASHION_MNIST_DEFAULT_ROOT} missing (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_crop_pad_option() -> None:
    assert load_data("fashion-mnist", augment=True, limit=64, crop_pad=2).train.augment_pad == 2
    assert load_data("fashion-mnist", augment=True, limit=64, crop_pad=0).train.augment_pad == 0
    assert load_data("fashion-mnist", augment=True, limit=64).train.augment_flip
    with pytest.raises(ValueError, match="crop_pad must be >= 0 pixels, got -1"):
        load_data("fashion-mnist", augment=True, limit=64, crop_pad=-1)
