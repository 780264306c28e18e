"""The dataset registry, and the order contract every dataset's batches follow: the permutation per (seed, epoch),
the ranks' chunks of it, and augmentation draws that belong to images, not to batches or ranks."""
import dataclasses

import numpy as np
import pytest
import torch

from arcdist.config import Config, ConfigError, DataConfig
from arcdist.data import DATASETS as SPECS, DeviceData, train_batches
from arcdist.datasets import (AUGMENTATIONS, DATASETS, DatasetSpec, Order, dataset_class, dataset_spec,
                              epoch_permutation, register_dataset, sample_indices)
from arcdist.datasets.augment import CROP_ASPECT, crop, crop_boxes, flip, move, shift
from arcdist.datasets.order import STREAMS, augmentation_draws


def test_the_registry_holds_the_four_datasets_in_order():
    assert list(DATASETS) == ["mnist", "fashion-mnist", "cifar10", "folder"]
    assert {name: (s.channels, s.image_size, s.num_classes) for name, s in SPECS.items()} == {
        "mnist": (1, 28, 10), "fashion-mnist": (1, 28, 10), "cifar10": (3, 32, 10), "folder": (0, 0, 0)}
    for name, cls in DATASETS.items():
        if name == "folder":  # its spec is the folder's and the variant's (tests/test_folder.py)
            continue
        spec = dataset_spec(name)
        assert cls.name == spec.name == name and dataset_class(name) is cls
        assert len(spec.mean) == len(spec.std) == spec.channels
    assert dataset_spec("fashion-mnist").classes[0] == "T-shirt" and dataset_spec("mnist").classes[3] == "3"


def test_an_unknown_dataset_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError) as e:
        dataset_class("cifar-100")
    assert str(e.value) == "unknown dataset 'cifar-100'; valid datasets: mnist, fashion-mnist, cifar10, folder"


def test_a_registration_must_match_its_spec():
    with pytest.raises(TypeError, match="registered as 'other'"):
        @register_dataset("other")
        class Wrong(dataset_class("mnist")):
            spec = DatasetSpec("wrong", 1, 28, (0.5,), (0.5,), ("a", "b"))
    assert "other" not in DATASETS and "wrong" not in DATASETS


def test_every_augmentation_has_a_config_field_and_one_stream():
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    assert list(AUGMENTATIONS) == ["flip", "shift", "crop", "rotate"] and set(AUGMENTATIONS) <= fields
    drawn = [a for _, names in STREAMS.values() for a in names]
    assert sorted(drawn) == sorted(AUGMENTATIONS)
    offsets = [offset for offset, _ in STREAMS.values()]
    assert len(set(offsets)) == len(offsets)
    cfg = Config(data=DataConfig(batch_size=32, shift=2, flip=True, rotate=5.0))
    order = Order.of(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=4)), rank=1, world=2)
    assert order == Order(32, 4, 1, 2, dict(flip=True, shift=2, crop=0.0, rotate=5.0))
    with pytest.raises(ValueError, match="unknown augmentation blur"):
        Order(8, 0, augment=dict(blur=1))


def test_the_random_streams_are_the_ones_runs_were_trained_with():
    """Values of the streams as they were before datasets became components: a change would break resume."""
    assert epoch_permutation(12, 5, 3).tolist() == [5, 4, 1, 3, 7, 9, 11, 8, 6, 10, 0, 2]
    d = augmentation_draws(6, 5, 3, dict(shift=2, flip=True, rotate=10.0))
    assert d["shift"].tolist() == [[1, -2], [2, -1], [0, 2], [2, 1], [-2, 2], [1, 1]]
    assert d["flip"].tolist() == [0, 1, 0, 0, 0, 1]
    assert augmentation_draws(6, 5, 3, dict(flip=True))["flip"].tolist() == [1, 1, 0, 0, 1, 0]
    assert d["rotate"][:4].tolist() == [-0.07283570188393725, 0.048095196116187885, -0.13254846301369022,
                                        -0.012669132977271024]
    assert augmentation_draws(6, 5, 3, dict(shift=0, flip=False, crop=0.0, rotate=0.0)) == {}
    # a crop draws from a stream of its own: turning it on leaves the others' draws as they were
    with_crop = augmentation_draws(6, 5, 3, dict(shift=2, flip=True, rotate=10.0, crop=0.5))
    assert all(torch.equal(with_crop[k], d[k]) for k in d)
    assert sample_indices(12, 5, 5).tolist() == [0, 1, 4, 9, 11]


@pytest.mark.parametrize("n,batch,world", [(50, 8, 1), (50, 8, 2), (103, 12, 4), (64, 16, 8)])
def test_same_seed_and_epoch_same_permutation_and_the_rank_chunks_partition_it(n, batch, world):
    orders = [Order(batch, seed=3, rank=r, world=world) for r in range(world)]
    perm = orders[0].permutation(n, 2)
    assert torch.equal(perm, orders[-1].permutation(n, 2)) and torch.equal(perm, epoch_permutation(n, 3, 2))
    assert sorted(perm.tolist()) == list(range(n))
    assert not torch.equal(perm, orders[0].permutation(n, 3))
    steps = orders[0].steps(n)
    assert steps == n // batch
    taken = [p for step in range(steps) for o in orders for p in range(n)[o.positions(step)]]
    assert taken == list(range(steps * batch))  # every position of the full batches once, in order, rank by rank


def test_an_epoch_of_several_passes_shows_each_image_once_a_pass_with_its_own_draws():
    """data.repeats: an epoch of 3 passes is 3 permutations one after another (the first the one-pass epoch's),
    3n positions in full batches, each position its own augmentation draw (an image's copies move differently)."""
    n, passes = 20, 3
    one, three = Order(4, seed=5), Order(4, seed=5, repeats=passes, augment=dict(shift=2))
    perm = three.permutation(n, 1)
    assert len(perm) == passes * n and torch.equal(perm[:n], one.permutation(n, 1))
    assert all(sorted(perm[p * n:(p + 1) * n].tolist()) == list(range(n)) for p in range(passes))
    assert three.steps(n) == 15 and one.steps(n) == 5 and Order(8, 5, repeats=3).steps(n) == 7  # 60 // 8
    (_, _, moves), = three.draws(n, 1)
    assert moves.shape == (passes * n, 2)
    data = DeviceData(torch.randint(0, 256, (n, 1, 9, 9), dtype=torch.uint8), torch.arange(n), dataset_spec("mnist"),
                      torch.device("cpu"))
    seen = [(int(y), x) for xb, yb in train_batches(data, three, epoch=1) for x, y in zip(xb, yb)]
    assert len(seen) == passes * n and sorted(y for y, _ in seen) == sorted(list(range(n)) * passes)
    copies = [[x for y, x in seen if y == i] for i in range(n)]
    assert sum(not torch.equal(c[0], c[1]) or not torch.equal(c[1], c[2]) for c in copies) >= n * 0.9


@pytest.mark.parametrize("n, batch, repeats", [(200, 16, 11), (1_000, 16, 3), (2_000, 16, 2), (2_048, 16, 1),
                                               (60_000, 256, 1), (16, 16, 128), (3_000, 16, 1)])
def test_a_small_folder_repeats_its_images_to_128_steps_an_epoch(n, batch, repeats):
    from arcdist.shape import MIN_STEPS, auto_repeats

    assert auto_repeats(n, batch) == repeats
    assert n // batch * repeats >= MIN_STEPS and (repeats == 1 or n // batch * (repeats - 1) < MIN_STEPS)


def test_shift_after_flip_is_the_single_move():
    x = torch.randint(0, 256, (5, 2, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    moves = torch.tensor([[1, -2], [0, 0], [-2, 2], [2, 1], [0, -1]])
    flips = torch.tensor([1, 0, 1, 0, 1])
    assert torch.equal(shift(flip(x, flips), moves, 2), move(x, torch.cat([moves, flips[:, None]], 1), 2))


def test_a_crop_box_is_inside_the_image_with_its_area_and_aspect_in_range():
    boxes = crop_boxes(torch.Generator().manual_seed(0), 20_000, 0.25)
    w, h, x0, y0 = boxes.T
    assert boxes.dtype == torch.float64 and boxes.shape == (20_000, 4)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1).all() and (y0 + h <= 1).all()
    area, aspect = w * h, w / h
    assert area.min() >= 0.25 - 1e-12 and area.max() <= 1 and abs(float(area.mean()) - 0.625) < 0.01  # uniform
    assert aspect.min() >= CROP_ASPECT[0] - 1e-12 and aspect.max() <= CROP_ASPECT[1] + 1e-12
    assert abs(float(aspect.log().mean())) < 0.01  # as wide as tall, on average in log
    assert float((aspect > 1.2).float().mean()) > 0.1 and float((aspect < 1 / 1.2).float().mean()) > 0.1
    assert abs(float(x0.div(1 - w).mean()) - 0.5) < 0.01  # placed uniformly
    whole = crop_boxes(torch.Generator().manual_seed(0), 5, 1.0)
    assert torch.allclose(whole, torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64).expand(5, 4))


def test_a_crop_equals_torchvisions_resized_crop_inside_the_box():
    """Boxes on whole pixels against torchvision's resized_crop (bilinear, antialias off): equal but for the output
    pixels that sample outside the box's outer pixel centres (the first and last ceil(S/2w - 1/2) columns, and rows
    likewise), where torchvision clamps to the box's edge and the crop reads the pixel beyond it."""
    import math

    from torchvision.transforms.v2 import functional as TF

    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    pixel_boxes = [(8, 12, 3, 5), (20, 16, 12, 0), (32, 32, 0, 0)]  # (width, height, left, top) in pixels
    boxes = torch.tensor([[w / 32, h / 32, left / 32, top / 32] for w, h, left, top in pixel_boxes], dtype=torch.float64)
    out = crop(x, boxes)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for i, (w, h, left, top) in enumerate(pixel_boxes):
        ref = TF.resized_crop(x[i].float(), top, left, h, w, [32, 32], antialias=False)
        rx, ry = math.ceil(16 / w - 0.5), math.ceil(16 / h - 0.5)  # 2 and 1, 1 and 1, 0 and 0
        torch.testing.assert_close(out[i, :, ry:32 - ry, rx:32 - rx], ref[:, ry:32 - ry, rx:32 - rx], atol=1e-3, rtol=0)
    assert torch.equal(out[2], x[2].float())  # the whole image: itself


def test_augmentation_draws_belong_to_images_whatever_the_batch_size_and_ranks():
    torch.manual_seed(0)
    n = 48
    data = DeviceData(torch.randint(0, 256, (n, 1, 9, 9), dtype=torch.uint8), torch.arange(n),
                      dataset_spec("mnist"), torch.device("cpu"))
    augment = dict(shift=2, flip=True, crop=0.5, rotate=20.0)

    def per_image(batch: int, world: int) -> dict[int, torch.Tensor]:
        seen = {}
        for r in range(world):
            for xb, yb in train_batches(data, Order(batch, 7, r, world, augment), epoch=1):
                seen.update(zip(yb.tolist(), xb))
        return seen

    reference = per_image(8, 1)
    assert len(reference) == n
    for batch, world in ((16, 2), (24, 4), (48, 3), (12, 1)):
        other = per_image(batch, world)
        assert len(other) == n
        for image, x in other.items():
            torch.testing.assert_close(x, reference[image], atol=1e-5, rtol=0)
    unaugmented = {int(y): x for xb, yb in train_batches(data, Order(n, 7), epoch=1) for x, y in zip(xb, yb)}
    assert sum(not torch.equal(unaugmented[i], reference[i]) for i in range(n)) > n * 0.9
    other_epoch = {int(y): x for xb, yb in train_batches(data, Order(n, 7, augment=augment), epoch=2)
                   for x, y in zip(xb, yb)}
    assert sum(not torch.equal(other_epoch[i], reference[i]) for i in range(n)) > n * 0.9


def test_per_image_normalisation_equals_its_formula_and_removes_tint_and_contrast():
    from arcdist.data import normalise

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 3, 8, 8)).astype(np.float64)
    x[4] = 77.0  # a flat image
    mean, std = np.array([0.5, 0.4, 0.3]) * 255, np.array([0.2, 0.25, 0.3]) * 255
    ref = (x - mean[:, None, None]) / std[:, None, None]
    ref = ref - ref.mean((2, 3), keepdims=True)
    ref = ref / (ref.reshape(5, -1).std(1, ddof=1)[:, None, None, None] + 1e-3)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    inv = 1 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    got = normalise(torch.tensor(x, dtype=torch.uint8), m, inv, per_image=True)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-4)
    assert got[4].abs().max() < 0.1  # about zero (float32 rounding of the mean, over the 1e-3), not NaN
    # a colour offset per channel and a common gain (a tinted, dimmer copy) give the same input, but for the 1e-3
    tinted = torch.tensor(x[:4] * 0.5 + np.array([40.0, 10.0, 90.0])[:, None, None])
    torch.testing.assert_close(normalise(tinted, m, inv, True), got[:4], rtol=0, atol=5e-3)
    plain = normalise(torch.tensor(x, dtype=torch.uint8), m, inv, per_image=False)
    np.testing.assert_allclose(plain.numpy(), (x - mean[:, None, None]) / std[:, None, None], rtol=0, atol=1e-4)
