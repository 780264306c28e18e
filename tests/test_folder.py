"""`--dataset folder`: a folder of images in ImageFolder's layout, read by torchvision; in memory or streamed."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from arcdist.config import DataConfig, ModelConfig
from arcdist.datasets import DataError, load_dataset
from arcdist.datasets.folder import ImageFolderDataset
from helpers import REAL_DATA, ROOT, metric_rows, run_train, tiny_args

_spec = importlib.util.spec_from_file_location("image_folder", ROOT / "tools" / "image_folder.py")
image_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_folder)

needs_mnist = pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not found")


@pytest.fixture(scope="module")
def mnist_pngs(tmp_path_factory) -> Path:
    """The first 600 train and 200 test images of real MNIST as PNG folders."""
    out = tmp_path_factory.mktemp("pngs") / "mnist"
    image_folder.write_folder(out, "mnist", str(REAL_DATA), 600, 200)
    return out


@needs_mnist
def test_png_folders_decode_to_exactly_the_idx_pairs(mnist_pngs):
    idx = load_dataset("mnist", REAL_DATA, download=False)
    got = ImageFolderDataset(mnist_pngs, channels=1, image_size=28).read()
    for x, y, ref_x, ref_y in ((got.train_x, got.train_y, idx.train_x[:600], idx.train_y[:600]),
                               (got.test_x, got.test_y, idx.test_x[:200], idx.test_y[:200])):
        # the folder's order is by class, then by file name (the IDX position): a stable sort by label
        order = torch.sort(ref_y, stable=True).indices
        assert x.dtype == torch.uint8 and x.shape == ref_x.shape
        assert torch.equal(y, ref_y[order]) and torch.equal(x, ref_x[order])


@needs_mnist
def test_images_are_converted_to_the_variants_channels_and_size(mnist_pngs):
    ds = ImageFolderDataset(mnist_pngs, channels=3, image_size=32)
    x = ds.read().test_x
    assert x.shape == (200, 3, 32, 32) and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert ds.nbytes() == 800 * 3 * 32 * 32


@needs_mnist
def test_settle_records_classes_mean_and_std_of_the_train_split(mnist_pngs):
    data = ImageFolderDataset.settle(DataConfig(dataset="folder", data_dir=str(mnist_pngs), workers=0), ModelConfig())
    x = load_dataset("mnist", REAL_DATA, download=False).train_x[:600].double() / 255
    assert data.classes == tuple(str(d) for d in range(10))
    assert data.mean[0] == pytest.approx(x.mean().item(), abs=1e-6)
    assert data.std[0] == pytest.approx(x.std(correction=0).item(), abs=1e-6)
    assert ImageFolderDataset.settle(data, ModelConfig()) is data  # recorded once: a resume does not measure


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("world, cached", [(1, "false"), (2, "true")])
def test_streaming_gives_the_metrics_of_in_memory(mnist_pngs, tmp_path, world, cached):
    """Streamed per batch by DataLoader workers, or from the decoded copy both ranks of the node share."""
    rows = {}
    for stream in ("false", "true"):
        out = tmp_path / f"stream-{stream}"
        run_train(tiny_args(mnist_pngs, out, 2, "--dataset", "folder", "--set", f"data.stream={stream}",
                            "--set", "data.shift=1", "--set", "data.workers=1", "--set",
                            f"data.decoded_cache={cached}"), world=world)
        rows[stream] = metric_rows(out)
    assert len(rows["true"]) == 2 and rows["true"] == rows["false"]


def _bad(tmp_path: Path, pngs: Path, how: str) -> tuple[Path, str]:
    """A copy of `pngs` broken one way; returns it and the path the error must name."""
    d = tmp_path / how
    shutil.copytree(pngs, d)
    if how == "empty-class":
        for f in (d / "train" / "3").iterdir():
            f.unlink()
        return d, str(d / "train" / "3")
    if how == "corrupt-image":
        victim = sorted((d / "test" / "7").iterdir())[2]
        victim.write_bytes(victim.read_bytes()[:40])
        return d, str(victim)
    if how == "non-image-file":
        (d / "train" / "5" / "notes.txt").write_text("not an image")
        return d, str(d / "train" / "5" / "notes.txt")
    if how == "no-test-folder":
        shutil.rmtree(d / "test")
        return d, "no test/ (or val/) folder"
    raise ValueError(how)


@needs_mnist
@pytest.mark.parametrize("how", ["empty-class", "corrupt-image", "non-image-file", "no-test-folder"])
# (a class in test/ only is no longer bad input: it is an unseen class, tests/test_openset.py)
def test_a_bad_folder_is_one_line_naming_it_exit_2_nothing_written(mnist_pngs, tmp_path, how):
    data, named = _bad(tmp_path, mnist_pngs, how)
    out = tmp_path / "run"
    proc = run_train(tiny_args(data, out, 1, "--dataset", "folder"), check=False)  # data.workers: the default, 2
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("arcdist: error: ") and named in lines[0], lines
    assert not out.exists()


@needs_mnist
@pytest.mark.slow
def test_a_corrupt_image_met_by_a_streaming_worker_is_one_line(mnist_pngs, tmp_path):
    """A streamed test split is decoded only at evaluation, in DataLoader workers: still one line, exit 2; the run
    folder it started is resumable once the file is mended (its fingerprint was refused before: no checkpoint, so
    the resume trains from epoch 1 on the mended data and records it)."""
    data, named = _bad(tmp_path, mnist_pngs, "corrupt-image")
    proc = run_train(tiny_args(data, tmp_path / "run", 1, "--dataset", "folder", "--set", "data.stream=true",
                               "--set", "data.decoded_cache=false"), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and named in lines[0] and "cannot decode" in lines[0], lines
    shutil.copy(mnist_pngs / Path(named).relative_to(data), named)
    run_train(["--resume", str(tmp_path / "run"), "--no-progress", "--wandb", "disabled"])
    assert [r["epoch"] for r in metric_rows(tmp_path / "run")] == [1]


def _pngs(root: Path, n: int = 6, size: int = 20) -> tuple[str, ...]:
    from PIL import Image

    root.mkdir(parents=True)
    gen = torch.Generator().manual_seed(n)
    for i in range(n):
        pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"{i}.png")
    return tuple(sorted(str(p) for p in root.iterdir()))


def test_a_decoded_copy_equals_the_decoded_files_and_is_written_once_per_state_of_the_folder(tmp_path, monkeypatch):
    import numpy as np

    from arcdist.datasets import decoded
    from arcdist.datasets.folder import Decoder, decode_all

    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    paths, decode = _pngs(tmp_path / "d" / "a"), Decoder(3, 16)
    path, why = decoded.decoded_file(paths, decode, 0, "train")
    assert why == "" and np.array_equal(np.load(path), decode_all(paths, decode).numpy())
    assert np.load(path).shape == (6, 3, 16, 16)
    monkeypatch.setattr(decoded, "file_loader", lambda *a, **k: pytest.fail("decoded again"))
    assert decoded.decoded_file(paths, decode, 0, "train") == (path, "")  # the node's later readers
    monkeypatch.undo()
    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    test, _ = decoded.decoded_file(paths, decode, 0, "test")  # a held-out test split of the same folder: its own
    Path(paths[0]).unlink()  # the folder changed: its split decoded again, the earlier copy removed
    newer, _ = decoded.decoded_file(paths[1:], decode, 0, "train")
    assert newer != path and not path.exists() and test.exists() and np.load(newer).shape[0] == 5
    assert sorted(p.name for p in (tmp_path / "cache" / "decoded").glob("*.npy")) == sorted([newer.name, test.name])


def test_the_mean_and_std_measured_on_the_decoded_copy_equal_the_files_and_leave_the_copy(tmp_path, monkeypatch):
    from arcdist.datasets.folder import Decoder, measure_files

    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    paths, decode = _pngs(tmp_path / "d" / "a"), Decoder(3, 16)
    want = measure_files(paths, decode, batch=4)
    assert not (tmp_path / "cache" / "decoded").exists()
    assert measure_files(paths, decode, batch=4, copy=True) == want  # (batches of 4 over 6 images: 2)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 1  # what the run then reads


@pytest.mark.parametrize("stream", [False, True])
def test_a_folder_split_is_read_from_its_decoded_copy_by_the_nodes_later_runs(tmp_path, monkeypatch, stream):
    from arcdist import data
    from arcdist.config import DataConfig
    from arcdist.datasets import decoded
    from arcdist.datasets.base import DatasetSpec
    from arcdist.datasets.folder import Decoder, Listing, decode_all

    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    paths, decode = _pngs(tmp_path / "d" / "a"), Decoder(3, 16)
    files = Listing(paths, torch.arange(6))
    spec = DatasetSpec("folder", 3, 16, (0.5,) * 3, (0.25,) * 3, tuple("abcdef"))
    split = data.stream_split if stream else data.read_split
    cfg = DataConfig(dataset="folder", workers=0)
    off = split(DataConfig(dataset="folder", workers=0, decoded_cache=False), "train", files, 4, spec,
                torch.device("cpu"), decode)
    assert off.decoded_path is None and off.why_not == ("data.decoded_cache=false" if stream else "")
    assert not (tmp_path / "cache" / "decoded").exists()
    first = split(cfg, "train", files, 4, spec, torch.device("cpu"), decode)
    monkeypatch.setattr(decoded, "file_loader", lambda *a, **k: pytest.fail("decoded again"))
    monkeypatch.setattr(data, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    later = split(cfg, "train", files, 4, spec, torch.device("cpu"), decode)  # a later run: nothing decoded
    assert later.decoded_path == first.decoded_path and later.decoded_path.parent == tmp_path / "cache" / "decoded"
    want = decode_all(paths[:4], decode)
    for d in (first, later):
        assert len(d) == 4 and torch.equal(d.x, want) and torch.equal(d.y, torch.arange(4))
        assert torch.equal(next(d.images([torch.tensor([3, 1])])), want[[3, 1]])


def test_a_decoded_copy_without_disk_room_or_of_a_corrupt_file_leaves_nothing_behind(tmp_path, monkeypatch):
    import shutil

    from arcdist.datasets import decoded
    from arcdist.datasets.folder import Decoder

    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    paths, decode = _pngs(tmp_path / "d" / "a"), Decoder(1, 16)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(decoded.shutil, "disk_usage", lambda p: usage._replace(free=decoded.SPARE + 6 * 256 - 1))
    path, why = decoded.decoded_file(paths, decode, 0, "train")
    assert path is None and why == (f"its decoded train split (2 KB) would leave less than 1.0 GB of the 1.0 GB free "
                                    f"in {tmp_path / 'cache' / 'decoded'}")
    monkeypatch.undo()
    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # a cache folder that cannot be made
    path, why = decoded.decoded_file(paths, decode, 0, "train")
    assert path is None and why.startswith(f"its decoded copy cannot be written in {tmp_path / 'a-file'}")
    monkeypatch.setenv("ARCDIST_CACHE_DIR", str(tmp_path / "cache"))
    Path(paths[3]).write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        decoded.decoded_file(paths, decode, 0, "train")
    assert [p.name for p in (tmp_path / "cache" / "decoded").iterdir() if not p.name.endswith(".lock")] == []


def _odd(tmp_path: Path) -> dict[str, tuple[Path, object]]:
    """One file per odd kind of image, and what its decoded 28-px grey (or RGB) pixels must be."""
    import numpy as np
    from PIL import Image

    d = tmp_path / "odd"
    d.mkdir()
    out = {}
    a = np.full((28, 28), 32896, np.uint16)  # 16-bit grey at half scale: 128 in 8 bits, not clipped to 255
    Image.fromarray(a).save(d / "grey16.png")
    out["grey16.png"] = 128
    p = Image.new("P", (28, 28), 1)
    p.putpalette([255, 255, 255, 0, 200, 0] + [0] * 762)
    p.save(d / "palette-transparent.png", transparency=1)  # every pixel the transparent entry: black
    out["palette-transparent.png"] = 0
    la = Image.fromarray(np.stack([np.full((28, 28), 255, np.uint8), np.zeros((28, 28), np.uint8)], -1), "LA")
    la.save(d / "grey-alpha.png")  # white, fully transparent: black
    out["grey-alpha.png"] = 0
    Image.new("CMYK", (28, 28), (0, 0, 0, 0)).save(d / "cmyk.jpg")  # no ink: white
    out["cmyk.jpg"] = 255
    e = np.zeros((28, 28), np.uint8)
    e[:, 10:16] = 255  # a vertical bright band as stored; EXIF orientation 6 turns it 90 degrees to view
    img = Image.fromarray(e)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(d / "exif.jpg", exif=exif, quality=100)
    out["exif.jpg"] = "horizontal band"
    Image.new("L", (4, 4), 200).save(d / "tiny.png")
    out["tiny.png"] = 200
    Image.new("L", (3000, 1000), 60).save(d / "large.png")
    out["large.png"] = 60
    return {k: (d / k, v) for k, v in out.items()}


def test_images_in_the_wild_decode_as_one_expects(tmp_path):
    from arcdist.datasets.folder import Decoder

    grey, rgb = Decoder(1, 28), Decoder(3, 28)
    for name, (path, want) in _odd(tmp_path).items():
        x, c = grey(str(path)), rgb(str(path))
        assert x.shape == (1, 28, 28) and c.shape == (3, 28, 28) and x.dtype == torch.uint8, name
        if want == "horizontal band":  # turned as its EXIF orientation says: the band runs across
            assert x[0, 11:15].float().mean() > 200 and x[0, :, 11:15].float().mean() < 150, name
        else:
            assert (x.int() - want).abs().max() <= 2, (name, x.unique())


def test_a_large_jpeg_decodes_at_a_reduced_scale_close_to_the_full_decode(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from arcdist.datasets import folder

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1200, 0:1600]
    a = np.stack([xx / 1600 * 255, yy / 1200 * 255, (xx // 40 + yy // 40) % 2 * 255], -1) + rng.normal(0, 8, (1200, 1600, 3))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(tmp_path / "photo.jpg", quality=92)
    band = np.zeros((400, 800), np.uint8)
    band[:, 300:500] = 255  # vertical as stored; EXIF orientation 6 turns it across
    exif = Image.fromarray(band).getexif()
    exif[0x0112] = 6
    Image.fromarray(band).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    seen, to_mode = [], folder.to_mode
    monkeypatch.setattr(folder, "to_mode", lambda img, mode: seen.append(img.size) or to_mode(img, mode))
    for size, reduced in ((96, (200, 150)), (224, (400, 300)), (28, (200, 150))):
        x = folder.Decoder(3, size)(str(tmp_path / "photo.jpg"))
        with Image.open(tmp_path / "photo.jpg") as img:  # the full decode, as torchvision's loader does it
            ref = v2.functional.pil_to_tensor(v2.functional.center_crop(
                v2.functional.resize(img.convert("RGB"), size, antialias=True), size))
        assert seen.pop() == reduced and x.shape == ref.shape == (3, size, size)
        # measured: a mean |difference| of 0.26, 2.2 and 1.6 levels of 255 at 28, 96 and 224 px (max 2, 24, 36)
        assert (x.float() - ref.float()).abs().mean() < 3 and (x.int() - ref.int()).abs().max() <= 48, size
    turned = folder.Decoder(1, 28)(str(tmp_path / "rotated.jpg"))
    assert seen.pop() == (100, 50)  # 1/8 of 800 x 400, turned after
    assert turned[0, 12:16].float().mean() > 200 and turned[0, :, 12:16].float().mean() < 150


def test_an_image_pil_refuses_is_one_line_naming_it(tmp_path):
    from PIL import Image

    from arcdist.datasets.folder import Decoder

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 Mpixels: PIL's decompression-bomb limit
    with pytest.raises(DataError, match=f"{bomb}: .*shrink the image or remove the file"):
        Decoder(1, 28)(str(bomb))


def test_the_folder_spec_needs_its_recorded_classes():
    with pytest.raises(DataError, match="measured when its run starts"):
        ImageFolderDataset.spec_for(DataConfig(dataset="folder"), ModelConfig())


def test_a_folder_is_listed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """A run's start asks for the listing three times (shape, statistics, loading): one listing of each split,
    and a changed folder (a file added) is listed again."""
    from PIL import Image

    from arcdist.datasets import folder as folder_module

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("L", (28, 28), 40).save(tmp_path / split / c / "0.png")
    calls = []
    real = folder_module.list_split
    monkeypatch.setattr(folder_module, "list_split", lambda *a: calls.append(a[1]) or real(*a))
    first = [ImageFolderDataset(tmp_path).train.paths for _ in range(3)]
    assert calls == ["train", "test"] and first[0] == first[2] and len(first[0]) == 2
    Image.new("L", (28, 28), 90).save(tmp_path / "train" / "b" / "1.png")
    assert len(ImageFolderDataset(tmp_path).train.paths) == 3 and calls == ["train", "test"] * 2


@pytest.mark.parametrize("case", ["one class folder", "one class in train/ only", "data.train_classes of one"])
def test_one_class_to_train_on_is_one_line_exit_2_nothing_written(tmp_path, case):
    """A classifier of one class learns nothing (its accuracy is 1.0 by construction): refused before anything is
    written, whether the folder has one class, train/ has one (test/'s others are unseen), or --set lists one."""
    from PIL import Image

    layout = {"one class folder": {"train": "a", "test": "a"}, "one class in train/ only": {"train": "a", "test": "az"},
              "data.train_classes of one": {"train": "ab", "test": "ab"}}[case]
    for split, classes in layout.items():
        for c in classes:
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("L", (28, 28), 40 * i).save(tmp_path / "d" / split / c / f"{i}.png")
    extra = ["--set", "data.train_classes=a"] if case == "data.train_classes of one" else []
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = run_train(tiny_args(tmp_path / "d", tmp_path / "run", 1, "--dataset", "folder", "--set", "data.workers=0",
                               *extra, batch=2), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "1 class to train on (a); a classifier needs at least 2" in lines[0]
    assert ("data.train_classes" in lines[0]) == bool(extra)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no run folder


def _class_folders(root: Path, counts: dict[str, int]) -> None:
    from PIL import Image

    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (28, 28), (7 * i + 11 * len(c)) % 256).save(root / c / f"img{i:02d}.png")


@pytest.mark.parametrize("args, side, size, said", [
    (["--variant", "A8"], 12, 24, "A8's layer list"), (["--variant", "R18"], 12, 32, "ResNet-18's"),
    (["--variant", "R18", "--set", "model.stem=small"], 6, 8, "ResNet-18's"),
    (["--variant", "R18", "--set", "model.stem=small"], 12, 12, None), (["--variant", "A8"], 28, 28, None),
    (["--variant", "A8"], 300, 224, "shrunk"), (["--variant", "R18"], 225, 224, "shrunk"),
    (["--variant", "R18"], 224, 224, None), (["--variant", "A8", "--set", "model.image_size=256"], 300, 256, None)])
def test_images_are_enlarged_to_the_smallest_size_the_net_takes_shrunk_to_224_and_the_run_says_so(
        tmp_path, args, side, size, said):
    from PIL import Image

    from arcdist import shape
    from arcdist.train import build_config, parse_args

    for c in ("ant", "bee"):
        for split, n in (("train", 4), ("test", 2)):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (side, side), 40 * i).save(tmp_path / "d" / split / c / f"{i}.png")
    cfg = build_config(parse_args([*args, "--dataset", "folder", "--data-dir", str(tmp_path / "d")]))
    assert cfg.model.image_size == size
    want = f"shrunk to {size} px when decoded (a folder's largest size unless set; --set model.image_size={side} " \
        "keeps theirs)" if said == "shrunk" else f"enlarged to {size} px when decoded, the smallest {said} takes"
    assert [line for line in shape.notes(cfg) if "px when decoded" in line] == (
        [f"arcdist: {side}-px images, {want}"] if said else [])  # (a size given with --set is not remarked on)


def test_a_folder_of_classes_holds_out_a_fraction_of_each_class_by_file_name(tmp_path):
    import hashlib

    from arcdist.datasets.folder import listing

    counts = {"ant": 10, "bee": 5, "cat": 1, "dog": 2}
    _class_folders(tmp_path / "here", counts)
    classes, all_classes, train, test = listing(tmp_path / "here", 0.2)
    assert classes == all_classes == sorted(counts)
    want_k = {"ant": 2, "bee": 1, "cat": 0, "dog": 1}  # round(0.2 n), at least 1 while one stays for training
    for label, c in enumerate(classes):
        names = sorted(f"img{i:02d}.png" for i in range(counts[c]))
        first = sorted(names, key=lambda f: hashlib.sha256(f"{c}/{f}".encode()).hexdigest())[:want_k[c]]
        got_test = sorted(Path(p).name for p, y in zip(test.paths, test.labels.tolist()) if y == label)
        got_train = sorted(Path(p).name for p, y in zip(train.paths, train.labels.tolist()) if y == label)
        assert got_test == sorted(first) and sorted(got_test + got_train) == names
    assert list(train.paths) == sorted(train.paths) and list(test.paths) == sorted(test.paths)  # ImageFolder's order
    shutil.copytree(tmp_path / "here", tmp_path / "elsewhere")
    moved = listing(tmp_path / "elsewhere", 0.2)[3]
    assert [Path(p).relative_to(tmp_path / "elsewhere") for p in moved.paths] == \
        [Path(p).relative_to(tmp_path / "here") for p in test.paths]  # the same split in any place
    assert len(listing(tmp_path / "here", 0.5)[3].paths) == 5 + 2 + 0 + 1


def test_a_folder_of_classes_trains_and_embeds_its_held_out_split(tmp_path):
    import json

    import numpy as np

    from arcdist.evaluation import embed

    _class_folders(tmp_path / "d", {"ant": 10, "bee": 10, "cat": 5})
    run_train(tiny_args(tmp_path / "d", tmp_path / "run", 1, "--dataset", "folder", "--set", "data.workers=0",
                        batch=4))
    data = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["data"]
    assert (data["classes"], data["test_fraction"]) == (["ant", "bee", "cat"], 0.2)
    saved = np.load(tmp_path / "run" / "features" / "test-epoch-0001.npz")
    assert np.bincount(saved["labels"]).tolist() == [2, 2, 1]
    out = tmp_path / "e.npz"
    assert embed.main([str(tmp_path / "run"), "--out", str(out), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(out)["features"], saved["features"], rtol=0, atol=1e-5)
    assert len(np.load(out)["paths"]) == 5


def test_hidden_files_and_folders_are_skipped_and_sub_folders_are_read(tmp_path):
    """A folder as macOS, Windows, Jupyter and photo libraries leave it: ._ twins that do not decode, __MACOSX,
    Thumbs.db and desktop.ini, .ipynb_checkpoints (as a class and inside one), a class's images in sub-folders of it
    (as torchvision reads)."""
    from arcdist.datasets.folder import listing
    from arcdist.evaluation.embed import image_files

    _class_folders(tmp_path / "d", {"ant": 3, "bee": 3})
    _class_folders(tmp_path / "d" / "bee", {"2019": 2, "2020": 2})  # bee/2019/img00.png and bee/2020/img00.png
    for junk in ("ant/._img00.png", "__MACOSX/ant/._img00.png", ".ipynb_checkpoints/x.png",
                 "bee/.ipynb_checkpoints/y.png", "ant/.DS_Store", "ant/Thumbs.db", "bee/2019/thumbs.db",
                 "bee/desktop.ini"):
        (tmp_path / "d" / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / junk).write_bytes(b"\x00\x05\x16\x07 not an image")
    trained, classes, train, test = listing(tmp_path / "d", 0.5)
    names = sorted(str(Path(p).relative_to(tmp_path / "d")) for p in train.paths + test.paths)
    assert classes == ["ant", "bee"] and names == sorted(
        [f"ant/img0{i}.png" for i in range(3)] + [f"bee/img0{i}.png" for i in range(3)] +
        [f"bee/{y}/img0{i}.png" for y in (2019, 2020) for i in range(2)])
    assert (len(test.paths), test.labels.tolist().count(1)) == (2 + 4, 4)  # round(0.5 x 3) of ant, of bee's 7: 4
    paths, labels, found = image_files(tmp_path / "d")
    assert (found, len(paths), labels.count(1)) == (["ant", "bee"], 10, 7)


def test_gif_jfif_and_avif_files_are_images_as_pil_reads_them(tmp_path):
    """torchvision's ImageFolder lists .jpg, .png, .webp, ... but not .gif, .jfif or .avif, which PIL reads (AVIF from
    Pillow 11.2): a folder of them was refused as "not an image file". A .heic is one with pillow-heif installed
    (tested where it is: it is not one of arcdist's requirements)."""
    from PIL import Image

    from arcdist.datasets.folder import Decoder, image_extensions, listing
    from arcdist.evaluation.embed import image_files

    readable = image_extensions()
    kinds = {"a.png": "PNG", "b.gif": "GIF", "c.jfif": "JPEG", "d.JPE": "JPEG", **({"e.avif": "AVIF"} if ".avif" in
             readable else {}), **({"f.heic": "HEIF"} if ".heic" in readable else {})}
    for c, shade in (("ant", 60), ("bee", 200)):
        (tmp_path / "d" / c).mkdir(parents=True)
        for name, fmt in kinds.items():
            Image.new("RGB", (20, 20), (shade, shade, shade)).save(tmp_path / "d" / c / name, format=fmt)
    _, classes, train, test = listing(tmp_path / "d", 0.5)
    paths = sorted(train.paths + test.paths)
    assert classes == ["ant", "bee"] and [Path(p).name for p in paths] == sorted(kinds) * 2
    decode = Decoder(1, 28)
    for p in paths:
        x = decode(p)
        assert x.shape == (1, 28, 28) and abs(float(x.float().mean()) - (60 if "/ant/" in p else 200)) < 3, p
    assert len(image_files(tmp_path / "d")[0]) == 2 * len(kinds)
    if ".heic" not in readable:  # no pillow-heif: a .heic is named as not an image, in one line
        (tmp_path / "d" / "ant" / "f.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
        with pytest.raises(DataError, match=r"ant/f.heic: not an image file \(images end in .jpg, .jpeg"):
            listing(tmp_path / "d", 0.5)


def test_train_beside_val_trains_judges_and_embeds_val(tmp_path):
    """ImageNet's layout: train/ and val/ (no test/) is a split dataset whose test split is val/."""
    import numpy as np

    from arcdist.evaluation import embed

    _class_folders(tmp_path / "d" / "train", {"ant": 8, "bee": 8})
    _class_folders(tmp_path / "d" / "val", {"ant": 2, "bee": 3})
    proc = run_train(tiny_args(tmp_path / "d", tmp_path / "run", 1, "--dataset", "folder", "--set",
                               "data.workers=0", batch=4))
    assert f"{tmp_path / 'd'} has no test/: its val/ is the test split" in proc.stdout
    saved = np.load(tmp_path / "run" / "features" / "test-epoch-0001.npz")
    assert np.bincount(saved["labels"]).tolist() == [2, 3]
    out = tmp_path / "e.npz"
    assert embed.main([str(tmp_path / "run"), "--out", str(out), "--no-progress"]) == 0
    assert [Path(p).parent.parent.name for p in np.load(out)["paths"]] == ["val"] * 5
    np.testing.assert_allclose(np.load(out)["features"], saved["features"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout, test", [(("train", "test"), "test"), (("train", "val"), "val"),
                                          (("train", "valid"), "valid"), (("train", "validation"), "validation"),
                                          (("train", "val", "test"), "test"), (("valid", "invalid"), None),
                                          (("val", "cat"), None)])
def test_the_test_split_is_test_then_val_and_a_class_named_val_stays_a_class(tmp_path, layout, test):
    from arcdist.datasets.folder import listing, test_dir

    for name in layout:
        _class_folders(tmp_path / name, {"ant": 2, "bee": 2}) if test else _class_folders(tmp_path, {name: 3})
    assert test_dir(tmp_path) == test
    trained, classes, train, held = listing(tmp_path)
    if test:
        assert (trained, len(train.paths), {Path(p).parts[-3] for p in held.paths}) == (["ant", "bee"], 4, {test})
    else:  # DIR/<class>/*: "val" and "valid" are class names here
        assert classes == sorted(layout) and len(held.paths) == 2  # round(0.2 x 3) = 1 of each


@pytest.mark.parametrize("name, fix", [("photos.zip", "unpack it (unzip photos.zip) and point --data-dir at the folder"),
                                       ("photos.tar.gz", "unpack it (tar -xf photos.tar.gz) and point --data-dir at"),
                                       ("cat.jpg", "point --data-dir at a folder")])
def test_data_dir_at_a_file_is_one_line_naming_the_fix(tmp_path, name, fix):
    from arcdist.datasets.folder import test_dir

    (tmp_path / name).write_bytes(b"PK")
    with pytest.raises(DataError) as e:
        test_dir(tmp_path / name)
    assert str(e.value).startswith(f"{tmp_path / name}: a file, not a folder; {fix}") and "\n" not in str(e.value)


def test_a_test_folder_of_loose_files_is_one_line_naming_the_fix(tmp_path):
    from arcdist.datasets.base import DataError
    from arcdist.datasets.folder import listing

    _class_folders(tmp_path / "train", {"ant": 3, "bee": 3})
    _class_folders(tmp_path / "x", {"test": 4})  # Kaggle's layout: test/ holds unlabelled images
    (tmp_path / "x" / "test").rename(tmp_path / "test")
    with pytest.raises(DataError) as e:
        listing(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'test'}: 4 files but no class folders, so no labels to judge by; put them "
                            f"in {tmp_path / 'test'}/<class>/*, or move test/ away to hold out part of train/ "
                            f"(--data-dir {tmp_path / 'train'})")


@pytest.mark.parametrize("case", ["train/ without test/", "test_fraction 1", "no such folder"])
def test_a_split_that_cannot_be_made_is_one_line_exit_2_nothing_written(tmp_path, case):
    _class_folders(tmp_path / "d" / ("train" if case == "train/ without test/" else ""), {"ant": 4, "bee": 4})
    extra = ["--set", "data.test_fraction=1"] if case == "test_fraction 1" else []
    data = tmp_path / ("nowhere" if case == "no such folder" else "d")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = run_train(tiny_args(data, tmp_path / "run", 1, "--dataset", "folder", *extra, batch=2), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    want = {"train/ without test/": "no test/ (or val/) folder", "test_fraction 1": "data.test_fraction must be between 0 and 1 (got 1.0)",
            "no such folder": "nowhere: no such folder"}[case]
    assert want in lines[0]
    assert ("try --set data.test_fraction=0.2" if case == "test_fraction 1" else "or DIR/<class>/*") in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("n, batch", [(60_000, 256), (30_000, 128), (7_500, 32), (6_000, 32), (3_000, 16),
                                      (1_500, 16), (200, 16), (16, 16), (10, 10), (7, 7)])
def test_a_folder_batch_leaves_an_epoch_at_least_128_steps(n, batch):
    from arcdist.shape import MIN_STEPS, auto_batch

    assert auto_batch(n, 256) == batch
    assert n // batch >= MIN_STEPS or batch == min(16, n)  # the floor, or every image of a folder of fewer
    assert auto_batch(n, 64) == min(batch, 64)  # never above the variant's


def test_a_small_folder_trains_at_the_batch_its_size_allows_and_says_so(tmp_path):
    import json

    from helpers import ONE_PASS, TINY

    _class_folders(tmp_path / "d", {"ant": 30, "bee": 30})  # 48 train images: 256 would be refused
    at = next(i for i in range(len(TINY)) if TINY[i:i + 2] == ONE_PASS)
    auto = TINY[:at] + TINY[at + 2:]  # the passes an epoch left to the rule
    proc = run_train([*auto, "--epochs", "1", "--data-dir", str(tmp_path / "d"), "--output-dir", str(tmp_path / "run"),
                      "--dataset", "folder", "--set", "data.workers=0"])
    data = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["data"]
    assert (data["batch_size"], data["repeats"]) == (16, 43)  # 3 steps a pass: 43 passes, 129 steps an epoch
    assert ("48 training images: batch 16 (T0's 256 is more than the 48 images), 43 passes an epoch, 129 steps "
            "(--set data.repeats=1 for one)") in proc.stdout
    kept = run_train([*TINY, "--epochs", "1", "--data-dir", str(tmp_path / "d"), "--output-dir",
                      str(tmp_path / "set"), "--dataset", "folder", "--set", "data.workers=0",
                      "--set", "data.batch_size=32"])
    assert json.loads((tmp_path / "set" / "config.json").read_text())["config"]["data"]["batch_size"] == 32
    assert "training images: batch" in kept.stdout  # a set batch below the variant's is named too


def test_one_test_image_a_class_writes_no_spread_gap_or_nan_and_prints_none(tmp_path):
    """A test split of one image per class (a 1,000-class folder of 4 images each) defines no spread, mean gap or
    retrieval figure: absent from the epoch line and the JSON files, which stay strict JSON (no bare NaN)."""
    import json

    classes = {"ant": 20, "bee": 20, "cat": 20}
    _class_folders(tmp_path / "d" / "train", classes)
    _class_folders(tmp_path / "d" / "test", dict.fromkeys(classes, 1))
    out = tmp_path / "run"
    proc = run_train(tiny_args(tmp_path / "d", out, 1, "--dataset", "folder", "--set", "data.workers=0",
                               "--set", "train.retrieval=true", batch=16))

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    rows = [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = strict((out / "summary.json").read_text())
    assert len(rows) == 1 and rows[0]["test_accuracy"] in (0, 1 / 3, 2 / 3, 1)
    for absent in ("intra_spread_deg", "min_mean_gap", "precision_at_1"):
        assert absent not in rows[0] and summary.get(absent) is None
    assert "min_centre_angle_deg" in rows[0]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("epoch 1/1"))
    assert "spread" not in line and "min centre angle" in line and "P@1" not in line
