"""IDX parsing (synthetic and real files), the data-dir rule, and the device-resident batch order."""
import gzip
import math

import numpy as np
import pytest
import torch

from arcdist.data import (DataError, augment, epoch_permutation, load_dataset, read_idx, resolve_data_dir, rotate,
                          shard_bounds, DeviceData, DATASETS, Order)
from arcdist.data import train_batches as serve
from arcdist.datasets import dataset_class
from arcdist.datasets.order import augmentation_draws
from helpers import make_tiny_mnist, write_cifar, write_idx


def train_batches(data, batch_size, seed, epoch, rank, world, start_step=0, shift=0, flip=False, degrees=0.0):
    order = Order(batch_size, seed, rank, world, dict(shift=shift, flip=flip, rotate=degrees))
    return serve(data, order, epoch, start_step)


def augment_plan(n, seed, epoch, shift, flip):
    """The shift and flip draws per position as one (n, 3) tensor (dy, dx, flip); None when both are off."""
    d = augmentation_draws(n, seed, epoch, dict(shift=shift, flip=flip))
    if not d:
        return None
    return torch.cat([d.get("shift", torch.zeros(n, 2, dtype=torch.long)),
                      d.get("flip", torch.zeros(n, dtype=torch.long))[:, None]], 1)


def rotation_plan(n, seed, epoch, degrees):
    return augmentation_draws(n, seed, epoch, dict(rotate=degrees)).get("rotate")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_raw_and_gz(tmp_path, gz):
    x = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    got = read_idx(write_idx(tmp_path / "img-idx3-ubyte", x, gz))
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, 4, 5)
    assert torch.equal(got, torch.from_numpy(x))
    labels = read_idx(write_idx(tmp_path / "lab-idx1-ubyte", np.array([7, 2, 1], dtype=np.uint8), gz))
    assert labels.tolist() == [7, 2, 1]


def test_wrong_magic_truncated_and_padded_files_are_refused(tmp_path):
    good = write_idx(tmp_path / "a-idx3-ubyte", np.zeros((2, 3, 3), np.uint8), gz=False)
    data = good.read_bytes()
    cases = {"magic": b"\x00\x00\x0d\x03" + data[4:], "truncated": data[:-1], "padded": data + b"\x00",
             "header": data[:6]}
    for name, blob in cases.items():
        path = tmp_path / f"{name}-idx3-ubyte"
        path.write_bytes(blob)
        with pytest.raises(DataError, match="magic|truncated"):
            read_idx(path)
    broken_gz = tmp_path / "b-idx3-ubyte.gz"
    broken_gz.write_bytes(gzip.compress(data)[:-12])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(broken_gz)


def test_image_and_label_counts_must_agree(tmp_path):
    root = make_tiny_mnist(tmp_path, n_train=20, n_test=10)
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        load_dataset("mnist", root, download=False)


def test_missing_files_name_the_folder_and_all_four(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "\n" not in msg
    for f in dataset_class("mnist").files:
        assert f in msg


def test_data_dir_flag_then_env_then_default(monkeypatch):
    monkeypatch.setenv("ARCDIST_DATA_DIR", "/env/dir")
    assert resolve_data_dir("/flag") == "/flag"
    assert resolve_data_dir(None) == "/env/dir"
    monkeypatch.delenv("ARCDIST_DATA_DIR")
    assert resolve_data_dir(None) == "./data"


def test_real_mnist_against_the_published_facts(real_data):
    s = load_dataset("mnist", real_data, download=False)
    assert tuple(s.train_x.shape) == (60000, 1, 28, 28) and tuple(s.test_x.shape) == (10000, 1, 28, 28)
    assert s.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert s.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(s.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert s.train_x.dtype == torch.uint8 and int(s.train_x.max()) == 255


def test_real_fashion_mnist_is_balanced(real_data):
    s = load_dataset("fashion-mnist", real_data, download=False)
    assert torch.bincount(s.train_y).tolist() == [6000] * 10
    assert torch.bincount(s.test_y).tolist() == [1000] * 10


@pytest.mark.parametrize("n,world", [(1001, 2), (10000, 3), (5, 8), (7, 1)])
def test_eval_shards_cover_every_row_once(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_batch_order_is_fixed_and_ranks_split_each_global_batch():
    x = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1)
    spec = DATASETS["mnist"]
    data = DeviceData(x, torch.arange(50), spec, torch.device("cpu"))
    one = [y for _, y in train_batches(data, 8, seed=3, epoch=2, rank=0, world=1)]
    two = [list(train_batches(data, 8, seed=3, epoch=2, rank=r, world=2)) for r in range(2)]
    assert len(one) == 6  # 50 // 8, the partial batch is dropped
    for step, y in enumerate(one):
        assert torch.equal(torch.cat([two[0][step][1], two[1][step][1]]), y)
    assert torch.equal(torch.cat(one), epoch_permutation(50, 3, 2)[:48])
    assert not torch.equal(epoch_permutation(50, 3, 2), epoch_permutation(50, 3, 3))
    resumed = [y for _, y in train_batches(data, 8, seed=3, epoch=2, rank=0, world=1, start_step=4)]
    assert all(torch.equal(a, b) for a, b in zip(resumed, one[4:]))
    xb, _ = next(train_batches(data, 8, seed=3, epoch=2, rank=0, world=1))
    assert xb.dtype == torch.float32 and xb.shape == (8, 1, 1, 1)


def reference_shift(img, dy, dx, flip):
    """Loop reference: out[i, j] = img[i - dy, j' - dx] (zero outside), j' mirrored first when flip."""
    c, h, w = img.shape
    src = img.flip(-1) if flip else img
    out = torch.zeros_like(img)
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[:, i, j] = src[:, i - dy, j - dx]
    return out


def test_augment_shifts_and_flips_like_a_loop_reference():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (6, 3, 7, 9), dtype=torch.uint8)
    plan = torch.tensor([[0, 0, 0], [1, 2, 0], [-2, 1, 1], [2, -2, 0], [0, 0, 1], [-1, -1, 1]])
    out = augment(x, plan, shift=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], x[0])  # no shift, no flip: unchanged
    assert torch.equal(out[4], x[4].flip(-1))
    for k, (dy, dx, f) in enumerate(plan.tolist()):
        assert torch.equal(out[k], reference_shift(x[k], dy, dx, f)), k
    assert int((out[1, :, 0, :] == 0).sum()) == 3 * 9  # the row shifted in is zero


def test_augmented_batches_are_fixed_per_seed_epoch_and_world_size():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    data = DeviceData(x, torch.arange(40), DATASETS["mnist"], torch.device("cpu"))
    kw = dict(seed=1, epoch=0, shift=2, flip=False)
    one = list(train_batches(data, 8, rank=0, world=1, **kw))
    two = [list(train_batches(data, 8, rank=r, world=2, **kw)) for r in range(2)]
    for step, (xb, yb) in enumerate(one):
        assert torch.equal(torch.cat([two[0][step][0], two[1][step][0]]), xb)
        assert torch.equal(yb, epoch_permutation(40, 1, 0)[step * 8:(step + 1) * 8])  # order untouched
    plain = list(train_batches(data, 8, seed=1, epoch=0, rank=0, world=1))
    changed = sum(not torch.equal(a[0], b[0]) for a, b in zip(one, plain))
    assert changed == 5  # every batch of 8 has a shifted image (P(no shift) = 1/25 per image)
    resumed = list(train_batches(data, 8, rank=0, world=1, start_step=3, **kw))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, one[3:]))
    p = augment_plan(1000, 1, 0, 2, True)
    assert p[:, :2].min() == -2 and p[:, :2].max() == 2 and set(p[:, 2].tolist()) == {0, 1}
    assert torch.equal(p, augment_plan(1000, 1, 0, 2, True)) and not torch.equal(p, augment_plan(1000, 1, 1, 2, True))
    assert augment_plan(1000, 1, 0, 0, False) is None


def test_rotate_quarter_turns_equal_rot90_and_small_angles_keep_the_centre():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 2, 6, 6), dtype=torch.uint8)
    out = rotate(x, torch.tensor([math.pi / 2, -math.pi / 2, 0.0], dtype=torch.float64))
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out[0], torch.rot90(x[0].float(), 1, dims=(1, 2)), atol=1e-4, rtol=0)  # anticlockwise
    torch.testing.assert_close(out[1], torch.rot90(x[1].float(), -1, dims=(1, 2)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[2], x[2].float(), atol=1e-4, rtol=0)
    dot = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    dot[0, 0, 2, 2] = 200  # the centre pixel of an odd image stays where it is under any rotation
    assert rotate(dot, torch.tensor([0.3], dtype=torch.float64))[0, 0, 2, 2] == pytest.approx(200, abs=1e-3)


def test_rotated_batches_are_fixed_per_seed_epoch_and_world_size():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    data = DeviceData(x, torch.arange(40), DATASETS["mnist"], torch.device("cpu"))
    kw = dict(seed=1, epoch=0, shift=1, degrees=10.0)
    one = list(train_batches(data, 8, rank=0, world=1, **kw))
    two = [list(train_batches(data, 8, rank=r, world=2, **kw)) for r in range(2)]
    for step, (xb, yb) in enumerate(one):
        torch.testing.assert_close(torch.cat([two[0][step][0], two[1][step][0]]), xb, atol=1e-5, rtol=0)
    shifted_only = list(train_batches(data, 8, rank=0, world=1, seed=1, epoch=0, shift=1))
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(one, shifted_only))  # rotation applied on top
    a = rotation_plan(1000, 1, 0, 10.0)
    assert a.shape == (1000,) and a.abs().max() <= math.radians(10) and a.abs().max() > math.radians(9.9)
    assert torch.equal(a, rotation_plan(1000, 1, 0, 10.0)) and not torch.equal(a, rotation_plan(1000, 1, 1, 10.0))
    assert rotation_plan(1000, 1, 0, 0.0) is None


def test_cifar_batches_load_in_torchvision_layout(tmp_path):
    import pickle

    root = write_cifar(tmp_path)
    s = load_dataset("cifar10", root, download=False)
    assert tuple(s.train_x.shape) == (40, 3, 32, 32) and tuple(s.test_x.shape) == (8, 3, 32, 32)
    raw = pickle.loads((root / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    assert torch.equal(s.train_x[8:16].reshape(8, -1), torch.from_numpy(raw[b"data"]))
    assert s.train_y[8:16].tolist() == raw[b"labels"]


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    import os
    import pickle

    root = write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="not a CIFAR-10 batch .*refusing"):
        load_dataset("cifar10", root, download=False)
    assert not marker.exists()


def test_cifar_missing_is_one_line_naming_the_folder(tmp_path):
    with pytest.raises(DataError, match="cifar10: missing data_batch_1.*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path, download=False)


def test_a_recorded_runs_data_is_its_own_folder_while_it_exists(tmp_path, monkeypatch):
    """evaluate, embed and resume read the folder the run recorded: $ARCDIST_DATA_DIR (the built-in datasets'
    home on a machine) is for a recorded folder that is gone; --data-dir always wins."""
    from arcdist.data import run_data_dir

    recorded, other = tmp_path / "my-photos", tmp_path / "builtin"
    recorded.mkdir()
    monkeypatch.setenv("ARCDIST_DATA_DIR", str(other))
    assert run_data_dir(str(recorded), None) == str(recorded)  # evaluate read $ARCDIST_DATA_DIR here before
    assert run_data_dir(str(recorded), "given") == "given"
    recorded.rmdir()
    assert run_data_dir(str(recorded), None) == str(other)
    monkeypatch.delenv("ARCDIST_DATA_DIR")
    assert run_data_dir(str(recorded), None) == str(recorded)  # nowhere else to look: the error will name it
