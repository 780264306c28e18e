"""Typed dotted overrides and JSON round trips."""
import re

import pytest
import torch

from arcdist.config import ConfigError, apply_overrides, from_dict, validate
from arcdist.variants import VARIANTS


def base():
    return VARIANTS["V1.1"].config


def test_overrides_are_parsed_to_the_fields_type():
    cfg = apply_overrides(base(), ["head.margin=0.3", "train.epochs=5", "optim.net=adam", "data.download=false",
                                   "data.batch_size=128"])
    assert (cfg.head.margin, cfg.train.epochs, cfg.optim.net, cfg.data.download, cfg.data.batch_size) == \
        (0.3, 5, "adam", False, 128)
    assert isinstance(cfg.train.epochs, int) and isinstance(cfg.head.margin, float)
    assert base().head.margin != 0.3  # the variant row itself is untouched


@pytest.mark.parametrize("item,match", [
    ("head.margin", "expected SECTION.FIELD=VALUE"),
    ("margin=0.3", "expected SECTION.FIELD=VALUE"),
    ("head.margin=abc", "expected a number"),
    ("train.epochs=2.5", "expected an integer"),
    ("optim.net=rmsprop", "expected one of adam, sgd"),
    ("head.nope=1", "unknown field 'nope'"),
    ("nope.margin=1", "unknown section 'nope'"),
    ("head.scale=nan", "finite"),
])
def test_bad_overrides_name_the_problem(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(base(), [item])


@pytest.mark.parametrize("item,match", [
    ("train.epochs=0", "epochs must be > 0"), ("optim.gamma=0", "optim.gamma must be > 0"),
    ("train.max_rollbacks=-1", "train.max_rollbacks must be >= 0"), ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.lr=-1", "optim.lr must be > 0"), ("data.batch_size=0", "batch size must be > 0"),
    ("optim.head_lr=-0.5", "head_lr must be > 0"), ("head.margin=2", "head.margin must be in"),
])
def test_validate_rejects_values_that_cannot_train(item, match):
    with pytest.raises(ConfigError, match=match):
        validate(apply_overrides(base(), [item]))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_json_round_trip_is_exact(name):
    import json

    cfg = VARIANTS[name].config
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_step_schedule_equals_torch_steplr_stepped_per_epoch():
    import torch

    from arcdist.optim import lr_factor

    cfg = VARIANTS["V1.1"].config.optim
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)
    spe = 7
    for epoch in range(65):
        for i in range(spe):
            assert lr_factor(cfg, epoch * spe + i, spe, 100) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert lr_factor(cfg, 60 * spe, spe, 100) == pytest.approx(0.8 ** 3)


def test_cosine_schedule_exact_values():
    from dataclasses import replace

    from arcdist.optim import lr_factor

    cfg = replace(VARIANTS["V2"].config.optim, schedule="cosine", warmup_epochs=1.0)
    spe, epochs = 10, 5  # 10 warm-up steps, 40 cosine steps
    assert [lr_factor(cfg, s, spe, epochs) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(cfg, 10, spe, epochs) == pytest.approx(1.0)
    assert lr_factor(cfg, 30, spe, epochs) == pytest.approx(0.5)
    assert lr_factor(cfg, 50, spe, epochs) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("variant,settles", [("L-arcface-norm", False), ("L-arcface-norm-settled", True)])
def test_head_lr_follows_the_net_schedule_only_when_settled(variant, settles):
    from arcdist.optim import build_schedulers

    cfg = VARIANTS[variant].config
    net_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    head_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.head_lr)
    spe, epochs = 8, cfg.train.epochs
    net_s, head_s = build_schedulers(cfg.optim, net_opt, head_opt, spe, epochs)
    head_lrs, net_factors = [], []
    for _ in range(spe * epochs):
        head_lrs.append(head_opt.param_groups[0]["lr"])
        net_factors.append(net_opt.param_groups[0]["lr"] / cfg.optim.lr)
        net_opt.step(), head_opt.step(), net_s.step(), head_s.step()
    want = [cfg.optim.head_lr * (f if settles else 1.0) for f in net_factors]
    assert head_lrs == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert (head_lrs[-1] < 0.01 * cfg.optim.head_lr) == settles  # the last step: near 0, or the full lr


@pytest.mark.parametrize("deep,long", [("A10", "A9"), ("A10F", "A9F")])
def test_the_deeper_long_recipe_changes_only_the_backbone(deep, long):
    """A10/A10F are A9/A9F with one more 3x3 ConvLayer at 64 and at 128 channels: nothing else may differ."""
    from dataclasses import replace

    from arcdist.model import describe

    a, b = VARIANTS[deep].config, VARIANTS[long].config
    assert replace(a, variant="", model=b.model) == replace(b, variant="")
    convs = [(layer[1], layer[2], layer[3]) for layer in a.model.layers if layer[0] == "conv"]
    assert convs == [(1, 32, 3), (32, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 1)]
    assert (describe(a.model)["params"], describe(b.model)["params"]) == (639_593, 454_887)


@pytest.mark.parametrize("flag,env,variant,want", [
    (None, "no", "A1", "auto"),  # accelerate launch always exports its default "no": the variant's auto stays
    (None, "bf16", "V2", "bf16"),  # accelerate launch --mixed_precision bf16 / a bf16 config file
    ("no", "bf16", "V2", "no"),  # the training flag wins
    (None, None, "V2", "auto"),
])
def test_mixed_precision_from_flag_launcher_and_variant(monkeypatch, flag, env, variant, want):
    from arcdist.train import build_config, parse_args

    if env is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    argv = ["--variant", variant] + (["--mixed-precision", flag] if flag else [])
    assert build_config(parse_args(argv)).train.mixed_precision == want


@pytest.mark.parametrize("argv, says", [
    (["--epochs", "1", "--set", "train.epochs=2"], "--set train.epochs=2: --epochs gives train.epochs too"),
    (["--seed", "1", "--set", "train.seed=2"], "--set train.seed=2: --seed gives train.seed too"),
    (["--limit-train", "10", "--set", "data.limit_train=5"],
     "--set data.limit_train=5: --limit-train gives data.limit_train too")])
def test_a_flag_and_a_set_of_the_same_field_are_refused(argv, says):
    """Which of the two won was silent (the --set: 2 epochs trained while a grid recorded 1)."""
    from arcdist.config import ConfigError
    from arcdist.train import build_config, parse_args

    with pytest.raises(ConfigError, match=f"^{re.escape(says)}; give it once$"):
        build_config(parse_args(["--variant", "T0", *argv]))
