"""Torn files and damaged checkpoints: what a kill -9 or a power cut leaves is set aside (kept), never fatal.

A torn last line of metrics.jsonl is moved to metrics.jsonl.torn with one warning and resume continues with exactly
the rows of the checkpoint it continues from; a checkpoint whose files do not match its checksums.sha256 is moved to
failed-epoch-NNNN with one warning and resume continues from the one before; with none left, one error line, exit 2.
"""
import json
import shutil
import struct
from pathlib import Path

import pytest
from safetensors.torch import load_file

from arcdist import checkpoint, runinfo
from arcdist.config import ConfigError
from helpers import metric_rows as rows, make_tiny_mnist, run_train, summary, tiny_args

TORN = b'{"epoch": 3, "train_loss": 1.2'  # what a kill mid-append leaves: a row cut short, no newline


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_mnist(tmp_path_factory.mktemp("torn-data"), n_train=256, n_test=64, seed=4)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> Path:
    """An undisturbed 3-epoch run that keeps all three checkpoints: the reference, and the run the tests damage."""
    out = tmp_path_factory.mktemp("torn") / "whole"
    run_train(tiny_args(data, out, 3, "--plot-every", "0", "--set", "train.keep_checkpoints=3", batch=32))
    return out


def resume(data: Path, out: Path, check: bool = True):
    return run_train(["--resume", str(out), "--data-dir", str(data), "--no-progress", "--wandb", "disabled",
                      "--plot-every", "0"], check=check)


def warnings(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("arcdist: warning:")]


def flip_tensor_bytes(path: Path) -> bytes:
    """Invert 8 bytes inside the tensor data of a safetensors file, its JSON header intact; returns the new bytes."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    for i in range(start + 64, start + 72):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def ckpt(run: Path, epoch: int) -> Path:
    return run / "checkpoints" / f"epoch-{epoch:04d}"


# -- metrics.jsonl: the torn tail ------------------------------------------------------------------

def write_rows(path: Path, n: int, tail: bytes = b"") -> list[dict]:
    made = [dict(epoch=e, train_loss=1.0 / e) for e in range(1, n + 1)]
    path.write_bytes("".join(json.dumps(r) + "\n" for r in made).encode() + tail)
    return made


def test_readers_skip_a_torn_tail_and_resume_sets_it_aside(tmp_path, capsys):
    path = tmp_path / runinfo.METRICS
    made = write_rows(path, 2, TORN)
    assert runinfo.read_metrics(tmp_path) == made  # read only: the file is left as it is
    assert path.read_bytes().endswith(TORN)
    runinfo.truncate_metrics(tmp_path, 2)
    assert runinfo.parse_jsonl(path) == (made, b"")
    assert (tmp_path / "metrics.jsonl.torn").read_bytes() == TORN
    assert capsys.readouterr().err.splitlines() == [
        f"arcdist: warning: {path} ended in a torn line ({len(TORN)} bytes, what a kill or power cut mid-write "
        f"leaves); moved it to {tmp_path / 'metrics.jsonl.torn'} and resuming"]
    # a second tear never overwrites the first one's bytes
    second = b"\0" * 40  # a power cut: the file's length reached the disk, its last bytes did not
    write_rows(path, 2, second)
    runinfo.truncate_metrics(tmp_path, 1)
    assert runinfo.read_metrics(tmp_path) == made[:1]
    assert (tmp_path / "metrics.jsonl.torn").read_bytes() == TORN
    assert (tmp_path / "metrics.jsonl.torn-2").read_bytes() == second


def test_a_row_missing_only_its_newline_is_whole(tmp_path):
    path = tmp_path / runinfo.METRICS
    made = write_rows(path, 3)
    path.write_bytes(path.read_bytes()[:-1])
    assert runinfo.parse_jsonl(path) == (made, b"")


def test_a_bad_line_before_whole_rows_is_not_a_tear(tmp_path):
    path = tmp_path / runinfo.METRICS
    write_rows(path, 3)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join([lines[0], b'{"epoch": 2, "tra', *lines[2:]]))
    before = path.read_bytes()
    with pytest.raises(ConfigError) as e:
        runinfo.truncate_metrics(tmp_path, 3)
    assert str(e.value) == (f"{path} line 2 is not a JSON row, yet rows follow it (not a torn tail); "
                            "move that line out of the file, then resume")
    assert path.read_bytes() == before and not (tmp_path / "metrics.jsonl.torn").exists()


def test_the_checkpoint_rows_restore_a_row_the_file_lost(tmp_path, capsys):
    path = tmp_path / runinfo.METRICS
    made = write_rows(path, 1, TORN)  # a power cut: row 2 torn although checkpoint 2 was written
    saved = made + [dict(epoch=2, train_loss=0.5)]
    runinfo.truncate_metrics(tmp_path, 2, saved + [dict(epoch=3, train_loss=0.3)])
    assert runinfo.read_metrics(tmp_path) == saved
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == (f"arcdist: warning: {path} held 1 rows for the 2 epochs of the checkpoint "
                                        "resumed, which holds 2; its rows are used")


# -- checksums -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_checksums_cover_every_file_and_find_any_change(whole, tmp_path):
    folder = shutil.copytree(ckpt(whole, 3), tmp_path / "epoch-0003")
    listed = sorted(line.split("  ")[1] for line in (folder / checkpoint.CHECKSUMS).read_text().splitlines())
    assert listed == sorted(p.name for p in folder.iterdir() if p.name != checkpoint.CHECKSUMS)
    assert "model.safetensors" in listed and "trainer.json" in listed and "metrics.jsonl" in listed
    assert checkpoint.verify(folder) is None
    model = folder / "model.safetensors"
    good = model.read_bytes()
    flip_tensor_bytes(model)
    load_file(model)  # the header is intact: loading alone does not notice
    assert checkpoint.verify(folder) == "model.safetensors does not match its checksum"
    model.write_bytes(good)
    (folder / "scheduler.bin").unlink()
    assert checkpoint.verify(folder) == "scheduler.bin is missing"
    shutil.copy(ckpt(whole, 3) / "scheduler.bin", folder)
    (folder / "extra.bin").write_bytes(b"x")
    assert checkpoint.verify(folder) == "extra.bin is not in its checksums.sha256"
    (folder / "extra.bin").unlink()
    assert checkpoint.verify(folder) is None
    (folder / checkpoint.CHECKSUMS).write_bytes((folder / checkpoint.CHECKSUMS).read_bytes()[:50])  # torn
    assert checkpoint.verify(folder) == "checksums.sha256 is unreadable (line 1 is not 'SHA256  FILE')"


# -- resume, end to end ----------------------------------------------------------------------------

@pytest.mark.slow
def test_killed_mid_append_resume_sets_the_torn_line_aside_and_matches(data, whole, tmp_path):
    """kill -9 while epoch 3's row was being appended (before its checkpoint): resume continues epoch 2's."""
    out = shutil.copytree(whole, tmp_path / "run")
    shutil.rmtree(ckpt(out, 3))
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (out / "metrics.jsonl").write_bytes(b"".join(lines[:2]) + TORN)
    proc = resume(data, out)
    assert warnings(proc) == [
        f"arcdist: warning: {out / 'metrics.jsonl'} ended in a torn line ({len(TORN)} bytes, what a kill or power cut "
        f"mid-write leaves); moved it to {out / 'metrics.jsonl.torn'} and resuming"]
    assert (out / "metrics.jsonl.torn").read_bytes() == TORN
    assert rows(out) == rows(whole) and len(rows(out)) == 3


def test_power_cut_torn_row_of_the_newest_checkpoint_is_restored_from_it(data, whole, tmp_path):
    """Epoch 3's checkpoint reached the disk but the end of metrics.jsonl and summary.json did not."""
    out = shutil.copytree(whole, tmp_path / "run")
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (out / "metrics.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][:40])
    torn_summary = (out / "summary.json").read_bytes()[:30]
    (out / "summary.json").write_bytes(torn_summary)
    proc = resume(data, out)  # nothing left to train: the rows come back from epoch-0003
    assert warnings(proc) == [
        f"arcdist: warning: {out / 'summary.json'} is unreadable (torn by a power cut?); moved it to "
        f"{out / 'summary.json.torn'} and resuming",
        f"arcdist: warning: {out / 'metrics.jsonl'} ended in a torn line (40 bytes, what a kill or power cut "
        f"mid-write leaves); moved it to {out / 'metrics.jsonl.torn'} and resuming",
        f"arcdist: warning: {out / 'metrics.jsonl'} held 2 rows for the 3 epochs of the checkpoint resumed, which "
        "holds 3; its rows are used"]
    assert (out / "metrics.jsonl.torn").read_bytes() == lines[2][:40]
    assert (out / "summary.json.torn").read_bytes() == torn_summary
    assert rows(out) == rows(whole)
    assert {k: v for k, v in summary(out).items() if k != "time_s"} == \
        {k: v for k, v in summary(whole).items() if k != "time_s"}  # (time_s: this process's seconds)


@pytest.mark.slow
def test_flipped_bytes_in_the_newest_checkpoint_move_it_aside_and_resume_the_one_before(data, whole, tmp_path):
    out = shutil.copytree(whole, tmp_path / "run")
    flipped = flip_tensor_bytes(ckpt(out, 3) / "model.safetensors")
    proc = resume(data, out)
    failed = out / "checkpoints" / "failed-epoch-0003"
    assert warnings(proc) == [
        f"arcdist: warning: checkpoint {ckpt(out, 3)} fails its checksums (model.safetensors does not match its "
        f"checksum); moved it to {failed}; trying the one before"]
    assert (failed / "model.safetensors").read_bytes() == flipped  # kept as it was found
    assert rows(out) == rows(whole)  # epoch 3 trained again from epoch 2's checkpoint, the same row once
    a, b = load_file(ckpt(whole, 3) / "model.safetensors"), load_file(ckpt(out, 3) / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert checkpoint.verify(ckpt(out, 3)) is None


def test_no_checkpoint_left_is_one_line_exit_2(data, whole, tmp_path):
    out = shutil.copytree(whole, tmp_path / "run")
    for epoch in (1, 2, 3):
        model = ckpt(out, epoch) / "model.safetensors"
        model.write_bytes(model.read_bytes()[:100])  # truncated
    metrics = (out / "metrics.jsonl").read_bytes()
    proc = resume(data, out, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line.split(" fails its checksums")[0] for line in warnings(proc)] == [
        f"arcdist: warning: checkpoint {ckpt(out, e)}" for e in (3, 2, 1)]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"arcdist: error: no checkpoint of {out} verifies (each was moved aside to {out / 'checkpoints' / 'failed-'}*); "
        "start a new run")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"failed-epoch-000{e}" for e in (1, 2, 3)]
    assert (out / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.slow
def test_a_checkpoint_without_checksums_loads_unverified(data, whole, tmp_path):
    """One an older arcdist wrote (no checksums.sha256, no metrics rows): resumed with a warning."""
    out = shutil.copytree(whole, tmp_path / "run")
    shutil.rmtree(ckpt(out, 3))
    for epoch in (1, 2):
        (ckpt(out, epoch) / checkpoint.CHECKSUMS).unlink()
        (ckpt(out, epoch) / runinfo.METRICS).unlink()
    proc = resume(data, out)
    assert warnings(proc) == [f"arcdist: warning: checkpoint {ckpt(out, 2)} has no checksums.sha256 (an older "
                              "arcdist wrote it): loaded unverified"]
    assert rows(out) == rows(whole)
