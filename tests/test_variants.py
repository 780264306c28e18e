"""The post's 12 variants: exact rows, every one builds, maps to 2-D, counts match an independent reference."""
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arcdist.model import build_backbone, describe
from arcdist.variants import POST_VARIANTS, VARIANTS, get_variant

POST = ["V0", "V1", "V1.1", "V1.1.2", "V1.1.3", "V1.1.4", "V1.2", "V1.2.2", "V1.2.3", "V1.2.4", "V2", "V2.1"]


def test_the_posts_twelve_in_order():
    assert list(POST_VARIANTS) == POST


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_builds_maps_to_2d_and_counts_match_the_model(name):
    cfg = VARIANTS[name].config
    net = build_backbone(cfg.model).eval()
    x = torch.randn(3, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    with FlopCounterMode(display=False) as counter:
        out = net(x[:1])
    assert net(x).shape == (3, 2)
    info = describe(cfg.model)
    assert info["params"] == sum(p.numel() for p in net.parameters())
    assert info["flops"] == counter.get_total_flops()  # conv + linear, 2 x multiply-adds
    assert out.shape == (1, 2)


def test_feature_map_shapes_before_the_head_match_the_post():
    shapes = {n: describe(VARIANTS[n].config.model)["pre_head_shape"] for n in POST}
    assert shapes["V0"] == (256, 5, 5)
    for n in ("V1", "V1.1", "V1.1.2", "V1.1.3", "V1.1.4"):
        assert shapes[n] == (64, 1, 1)
    assert shapes["V1.2"] == (128, 5, 5)
    assert shapes["V1.2.2"] == shapes["V1.2.3"] == shapes["V1.2.4"] == (128, 3, 3)
    assert shapes["V2"] == shapes["V2.1"] == (32, 1, 1)


def test_optimizers_batches_and_parents_match_the_table():
    o = {n: VARIANTS[n].config.optim for n in POST}
    for n in ("V0", "V1", "V2"):
        assert (o[n].net, o[n].head, o[n].lr, o[n].head_lr, o[n].gamma) == ("adam", "adam", 0.001, 0.001, 1.0)
    for n, lr in (("V1.1", 0.001), ("V1.1.2", 0.001), ("V1.1.3", 0.001), ("V1.1.4", 0.01), ("V1.2", 0.001),
                  ("V1.2.2", 0.001), ("V1.2.3", 0.01), ("V1.2.4", 0.01), ("V2.1", 0.01)):
        assert (o[n].net, o[n].lr, o[n].momentum, o[n].step_size, o[n].gamma) == ("sgd", lr, 0.9, 20, 0.8)
        assert (o[n].head, o[n].head_lr, o[n].head_momentum) == ("sgd", 0.5, 0.0)
    assert [VARIANTS[n].config.data.batch_size for n in POST] == [256] * 9 + [512, 256, 256]
    parents = {n: VARIANTS[n].parent for n in POST}
    assert parents == {"V0": "", "V1": "V0", "V1.1": "V1", "V1.1.2": "V1.1", "V1.1.3": "V1.1.2", "V1.1.4": "V1.1",
                       "V1.2": "V1.1", "V1.2.2": "V1.2", "V1.2.3": "V1.2.2", "V1.2.4": "V1.2.3", "V2": "V1",
                       "V2.1": "V2"}
    assert VARIANTS["V1.1.3"].config.model.fc == ("conv", 64, 5, 1, 2)
    assert VARIANTS["V1.1.3"].config.model.layers == VARIANTS["V1.1.2"].config.model.layers
    assert all(v.config.variant == v.name for v in VARIANTS.values())


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="valid variants: V0, V1, V1.1"):
        get_variant("V9")


def test_variants_command_prints_every_row_with_counts():
    out = subprocess.run([sys.executable, "-m", "arcdist.variants"], capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.split(" | ")[0].lstrip("| ") in VARIANTS]
    assert len(rows) == len(VARIANTS)
    v122 = next(r for r in rows if r.startswith("| V1.2.2 |"))
    assert f"{describe(VARIANTS['V1.2.2'].config.model)['params']:,}" in v122 and "| 128x3x3 |" in v122


def test_the_cpu_recipe_row_matches_the_readme_table():
    v = VARIANTS["A6"]
    info = describe(v.config.model)
    # 0.45 + 7.23 + 7.23 MFLOP in the three 3x3 stages, 0.59 + 0.13 in the two-layer head, 1 kFLOP in the fc
    assert (info["params"], info["flops"], info["pre_head_shape"]) == (454_887, 15_624_192, (256, 1, 1))
    cfg = v.config
    assert (cfg.train.mixed_precision, cfg.train.channels_last, cfg.train.epochs) == ("auto", "auto", 9)
    assert (cfg.head.init, cfg.head.freeze, cfg.data.shift, cfg.data.rotate) == ("even", True, 1, 0.0)
    assert cfg.head.order == (4, 9, 7, 1, 2, 3, 5, 8, 0, 6)
    assert (cfg.optim.net, cfg.optim.lr, cfg.optim.schedule, cfg.data.batch_size) == ("adam", 0.002, "cosine", 256)



def test_the_sphereface_cpu_recipe_is_a6_with_only_the_head_and_length_changed():
    a6, a7 = VARIANTS["A6"].config, VARIANTS["A7"].config
    assert describe(a7.model) == describe(a6.model) and a7.optim == a6.optim and a7.data == a6.data
    assert (a7.head.kind, a7.head.margin, a7.head.scale) == ("sphereface", 4.0, 1.0)
    assert a7.head.anneal == (1000.0, 0.12, 1.0, 5.0)  # the paper's: lambda = max(5, 1000 / (1 + 0.12 iteration))
    assert (a7.head.init, a7.head.freeze, a7.head.order) == (a6.head.init, True, a6.head.order)
    assert (a7.train.epochs, replace(a7.train, epochs=9)) == (5, a6.train)

def test_every_variant_leaves_precision_and_layout_to_the_machine():
    assert {(v.config.train.mixed_precision, v.config.train.channels_last) for v in VARIANTS.values()} == {("auto", "auto")}


def test_no_flag_entry_trains_the_main_job_on_a_cpu_and_on_a_gpu(monkeypatch):
    """`accelerate launch arcdist/train.py` with no --variant trains A8 (ArcFace, s = |x|) and says so; a resume
    keeps the run's own variant."""
    import torch

    from arcdist.train import parse_args
    from arcdist.variants import MAIN_VARIANT, default_variant

    assert MAIN_VARIANT == "A8"
    head = VARIANTS["A8"].config.head
    assert (head.kind, head.scale_by, head.margin, head.freeze) == ("arcface", "norm", 0.5, True)
    assert VARIANTS["A9"].config.head.margin == VARIANTS["A10"].config.head.margin == 0.2  # their figures' margin
    assert VARIANTS["A8"].config.train.epochs == 6
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = parse_args([])
    assert args.variant == "A8" and "training A8, the main job" in args.default_note and "on a CPU" in args.default_note
    assert "s = |x|, margin 0.5 rad, 6 epochs)" in args.default_note  # the row's own margin and epoch count
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    name, note = default_variant()
    assert name == "A8" and note.endswith("python -m arcdist.variants lists all") and "on a GPU" in note
    assert parse_args(["--variant", "V2"]).default_note is None
    resumed = parse_args(["--resume", "runs/x"])
    assert resumed.variant is None and resumed.default_note is None
