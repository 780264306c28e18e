"""Throughput of the post's loop, arcdist's training step and the bare compute bound, side by side.

    python bench/throughput.py --data-dir $ARCDIST_DATA_DIR                  # V1.2.2, batch 256, CPU
    python bench/throughput.py --modes bare --set train.mixed_precision=bf16 --set train.channels_last=true
    python bench/throughput.py --accuracy-steps 234                          # + test accuracy after N steps

Modes (each runs in its own process, so process-wide settings do not leak between them):
  post     the post's loop: torchvision MNIST + ToTensor + DataLoader(batch, shuffle=True), plain PyTorch
           model and head, two SGD optimizers (no arcdist code on the path)
  arcdist  arcdist's Stepper.train_step on device-resident batches (one process)
  ddp2     the same with 2 gloo ranks (accelerate launch --multi_gpu --num_processes 2), total images/s
  bare     forward + backward + both optimizer steps on one preloaded batch, nothing else
Prints images/s, the ratios arcdist/post and arcdist/bare, and achieved FLOP/s (3 x forward FLOPs per
image for forward + backward) against the machine's measured fp32 and bf16 convolution peaks, and the
images/s a run at that peak would reach (a ceiling no training loop passes at these FLOPs). On a GPU
machine the same modes run on the GPU; --grid-estimate times every post variant and sums the full
grid (12 variants x 100 epochs).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


MODES = ("post", "arcdist", "bare", "ddp2")


def parse_args(argv=None):
    from arcdist.cli import ArgumentParser  # a bad argument is one line, exit 2

    p = ArgumentParser(prog="bench/throughput.py", description=__doc__)
    p.add_argument("--variant", default="V1.2.2")
    p.add_argument("--modes", default="post,arcdist,bare,ddp2", help="comma-separated, or none")
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data-dir", default=os.environ.get("ARCDIST_DATA_DIR", str(ROOT / "data")))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--accuracy-steps", type=int, default=0, help="also train post and arcdist N steps; test acc")
    p.add_argument("--grid-estimate", action="store_true",
                   help="time every post variant's train_epoch, all in one process (GPU machines)")
    p.add_argument("--grid-variants", default=None, help="--grid-estimate: these variants only (comma-separated)")
    p.add_argument("--precision-table", action="store_true",
                   help="arcdist's step in fp32 / bf16 x NCHW / channels_last and auto, as a markdown table")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = p.parse_args(argv)
    if not args.one:  # (a child runs what its parent checked)
        from arcdist.errors import BadInput

        unknown = [m for m in args.modes.split(",") if m and m not in (*MODES, "none")]
        if unknown:
            p.error(f"--modes: {', '.join(unknown)} unknown; the modes are {', '.join(MODES)} (or none)")
        if args.steps < 1 or args.warmup < 0:
            p.error(f"--steps {args.steps} --warmup {args.warmup}: expected at least 1 timed step and 0 warm-up")
        try:
            _config(args)
        except BadInput as e:
            p.error(str(e))
    return args


def _config(args):
    """The variant with --set applied and its image shape fitted to the dataset, as `arcdist train` does (R18's
    3-channel 96-px stem takes MNIST's grey 28 px)."""
    from dataclasses import replace

    from arcdist import shape
    from arcdist.config import apply_overrides
    from arcdist.variants import get_variant

    cfg = apply_overrides(get_variant(args.variant).config, args.overrides)
    cfg = replace(cfg, data=replace(cfg.data, data_dir=args.data_dir))
    return shape.fit_model(cfg, shape.explicit_keys(args.overrides))


def _timed(step, n_warm: int, n: int, batch: int, sync) -> float:
    for _ in range(n_warm):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return n * batch / (time.perf_counter() - t0)


def torchvision_root(data_dir: str) -> str:
    """torchvision's MNIST reads only uncompressed raw files: unpack .gz copies into a temporary root."""
    import gzip
    import shutil
    import tempfile

    src = Path(data_dir) / "MNIST" / "raw"
    if all((src / f).exists() for f in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")):
        return data_dir
    root = Path(tempfile.mkdtemp())
    (root / "MNIST" / "raw").mkdir(parents=True)
    for gz in src.glob("*.gz"):
        with gzip.open(gz) as f, open(root / "MNIST" / "raw" / gz.stem, "wb") as out:
            shutil.copyfileobj(f, out)
    return str(root)


def run_post(args) -> dict:
    """The post's loop, as written there (torchvision Dataset + DataLoader, plain PyTorch)."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader

    from arcdist.heads.arcface import ArcMarginHead
    from arcdist.model import build_backbone

    cfg = _config(args)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    args.tv_root = torchvision_root(args.data_dir)
    ds = torchvision.datasets.MNIST(args.tv_root, train=True, download=False,
                                    transform=torchvision.transforms.ToTensor())
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=True)
    net, arc = build_backbone(cfg.model).to(dev), ArcMarginHead(cfg.head).to(dev)
    opt_net = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr, momentum=0.9)
    opt_arc = torch.optim.SGD(arc.parameters(), lr=0.5)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(dev), y.to(dev)
        loss = F.cross_entropy(arc(net(x), y, cfg.head.margin_warmup_epochs), y)  # the full margin
        opt_net.zero_grad()
        opt_arc.zero_grad()
        loss.backward()
        opt_net.step()
        opt_arc.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = dict(images_per_s=_timed(step, args.warmup, args.steps, cfg.data.batch_size, sync))
    if args.accuracy_steps:
        out["test_accuracy"] = _post_accuracy(args, cfg, net, arc, loader, opt_net, opt_arc, dev)
    return out


def _post_accuracy(args, cfg, net, arc, loader, opt_net, opt_arc, dev) -> float:
    """Train the post's loop from scratch for --accuracy-steps, then nearest-direction test accuracy."""
    import torch
    import torch.nn.functional as F
    import torchvision

    from arcdist.evaluation.metrics import separation_metrics
    from arcdist.heads.arcface import ArcMarginHead
    from arcdist.model import build_backbone
    from arcdist.optim import build_optimizers

    torch.manual_seed(cfg.train.seed)
    net, arc = build_backbone(cfg.model).to(dev), ArcMarginHead(cfg.head).to(dev)
    opt_net, opt_arc = build_optimizers(cfg.optim, net, arc)
    steps, spe = 0, len(loader.dataset) // cfg.data.batch_size
    while steps < args.accuracy_steps:
        for x, y in loader:
            if steps >= args.accuracy_steps or len(y) < cfg.data.batch_size:
                break
            x = (x.to(dev) - 0.1307) / 0.3081  # arcdist normalises too: compare like with like
            y = y.to(dev)
            loss = F.cross_entropy(arc(net(x), y, steps / spe), y)
            opt_net.zero_grad()
            opt_arc.zero_grad()
            loss.backward()
            opt_net.step()
            opt_arc.step()
            steps += 1
    test = torchvision.datasets.MNIST(args.tv_root, train=False, download=False,
                                      transform=torchvision.transforms.ToTensor())
    net.eval()
    feats, labels = [], []
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=1000):
            feats.append(net((x.to(dev) - 0.1307) / 0.3081).cpu())
            labels.append(y)
    return separation_metrics(torch.cat(feats), torch.cat(labels), arc.weight.detach().cpu())["accuracy"]


def _trainer(args):
    import tempfile

    from arcdist.train import Trainer, setup_accelerator

    cfg, acc, choice = setup_accelerator(_config(args))  # resolves train.mixed_precision / channels_last "auto"
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()), acc, no_progress=True)
    trainer.choice = choice
    return trainer, cfg, acc


def run_arcdist(args) -> dict:
    """arcdist's own Stepper.train_step over its own device-resident batches."""
    import torch

    from arcdist.data import Order, train_batches
    trainer, cfg, acc = _trainer(args)
    batches = train_batches(trainer.train_data, trainer.order, 0)

    def step():
        x, y = next(batches)
        trainer.stepper.train_step(x, y, getattr(cfg.head.params, "margin_warmup_epochs", 0.0))  # the full margin

    sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
    out = dict(images_per_s=_timed(step, args.warmup, args.steps, cfg.data.batch_size, sync),
               world=acc.num_processes, precision=trainer.choice.label())
    if args.accuracy_steps:
        trainer, cfg, acc = _trainer(args)
        steps, spe = 0, trainer.steps_per_epoch
        for epoch in range(10 ** 6):
            for x, y in train_batches(trainer.train_data, Order.of(cfg, 0, 1), epoch):
                if steps >= args.accuracy_steps:
                    break
                trainer.stepper.train_step(x, y, steps / spe)
                steps += 1
            if steps >= args.accuracy_steps:
                break
        out["test_accuracy"] = trainer.evaluate()[0]["accuracy"]
    return out


def run_bare(args) -> dict:
    """The compute bound: the same model and step on one preloaded real batch, nothing else."""
    import torch
    import torch.nn.functional as F

    trainer, cfg, acc = _trainer(args)
    x, y = trainer.train_data.batch(torch.arange(cfg.data.batch_size, device=acc.device))
    net, head = acc.unwrap_model(trainer.backbone), acc.unwrap_model(trainer.head)
    opt_net, opt_head = trainer.opt_net.optimizer, trainer.opt_head.optimizer
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with acc.autocast():
            feats = net(x)
        loss = F.cross_entropy(head(feats, y, cfg.head.margin_warmup_epochs), y)  # the full margin
        loss.backward()
        opt_net.step()
        opt_head.step()
        opt_net.zero_grad(set_to_none=True)
        opt_head.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
    return dict(images_per_s=_timed(step, args.warmup, args.steps, cfg.data.batch_size, sync),
                precision=trainer.choice.label())


def run_grid_epochs(args) -> dict:
    """--grid-estimate's timing: each variant's Trainer.train_epoch (the loop runs use, with train.sync_every,
    train.compile and the rest as --set gives them) over --steps steps, after one warm-up epoch of as many
    (cuDNN's algorithm search, compilation). One process for all variants: its start is paid once."""
    import dataclasses
    import gc
    import tempfile

    import torch

    from arcdist.data import load_dataset
    from arcdist.train import Trainer, setup_accelerator
    from arcdist.variants import POST_VARIANTS

    names = [v for v in (args.grid_variants or ",".join(POST_VARIANTS)).split(",") if v]
    splits, out = None, {}
    for name in names:
        args.variant = name
        cfg, acc, choice = setup_accelerator(_config(args))
        splits = splits or load_dataset(cfg.data.dataset, cfg.data.data_dir, download=False)
        limit = dict(limit_train=cfg.data.batch_size * args.steps, limit_test=min(1000, len(splits.test_y)))
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **limit))
        trainer = Trainer(cfg, Path(tempfile.mkdtemp()), acc, data=splits, no_progress=True)
        sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
        trainer.train_epoch(0)
        trainer.state.step, trainer.state.loss_sum = 0, 0.0
        sync()
        t0 = time.perf_counter()
        trainer.train_epoch(1)
        sync()
        out[name] = dict(images_per_s=args.steps * cfg.data.batch_size / (time.perf_counter() - t0),
                         precision=choice.label(), sync_every=trainer.stepper.every, compile=cfg.train.compile)
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def _child(argv: list[str], mode: str, extra_env: dict | None = None) -> dict:
    """Run one mode in a fresh process with these command-line arguments; its JSON result."""
    if mode == "ddp2":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--main_process_port", "29517", __file__, *argv, "--one", "arcdist"]
    else:
        cmd = [sys.executable, __file__, *argv, "--one", mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(extra_env or {})))
    # flat JSON objects; two ranks printing at once can share a line
    lines = re.findall(r"\{[^{}]*\}", proc.stdout)
    if proc.returncode or not lines:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    results = [json.loads(line) for line in lines]
    if mode == "ddp2":  # each rank times global batches (B images per step over both ranks): same figure
        return dict(images_per_s=min(r["images_per_s"] for r in results), world=2, precision=results[0]["precision"])
    return results[0]


def machine() -> str:
    """CPU model and core count, or the GPU's name."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from arcdist.hardware import cpu_flags, cpu_model

    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    limits = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)]
    return (f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, flags {' '.join(isa) or 'no AVX2'}, "
            f"torch kernels {torch.backends.cpu.get_cpu_capability()}" + (f", limited by {' '.join(limits)}" if limits else ""))


def measured_peak(dtype_name: str, windows: int = 5) -> float:
    """FLOP/s of a large 3x3 convolution (32 x 256 -> 256 channels, 28 x 28, channels_last), best of `windows`.

    The roofline for these conv nets, measured rather than computed from a clock and a vector width (a
    shared VM tells neither), and with a convolution because torch's fp32 matmul on this project's AMD
    CPU runs below the fp32 convolution kernels (141-185 against ~200 GFLOP/s) and would understate it.
    """
    import torch
    import torch.nn.functional as F

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    x = torch.randn(32, 256, 28, 28, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
    flops = 2 * 32 * 256 * 256 * 9 * 28 * 28
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    reps = 20 if dev == "cuda" else 2
    with torch.no_grad():
        for _ in range(2):
            F.conv2d(x, w, padding=1)
        best = 0.0
        for _ in range(windows):
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                F.conv2d(x, w, padding=1)
            sync()
            best = max(best, flops * reps / (time.perf_counter() - t0))
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        if args.one.startswith("peak-"):
            print(json.dumps(dict(flops=measured_peak(args.one[5:]))), flush=True)
            return 0
        result = {"post": run_post, "arcdist": run_arcdist, "bare": run_bare, "grid": run_grid_epochs}[args.one](args)
        rank = int(os.environ.get("RANK", "0"))
        print(json.dumps(dict(result, rank=rank)), flush=True)
        from arcdist.errors import end_process, multi_process

        if multi_process():  # a rank leaves as arcdist's runs do: the group destroyed, then os._exit
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        end_process(0)
    from arcdist.model import describe

    cfg = _config(args)
    fwd = describe(cfg.model)["flops"]
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--grid-estimate", "--precision-table")]
    peaks = {p: _child(argv, "peak-" + p)["flops"] for p in ("fp32", "bf16")}
    print(f"machine: {machine()}")
    print(f"peak (measured 3x3 convolution, 256 channels): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"variant {args.variant}, batch {cfg.data.batch_size}, overrides {args.overrides or 'none'}, "
          f"{fwd / 1e6:.1f} MFLOP/image forward (x3 for forward + backward)")
    if args.precision_table:
        precision_table(argv)
        return 0
    res, prec = {}, "fp32"
    for mode in [m for m in args.modes.split(",") if m and m != "none"]:
        res[mode] = _child(argv, mode)
        r = res[mode]
        if mode != "post":  # the post's loop is plain fp32; arcdist's modes report what "auto" resolved to
            prec = "bf16" if r["precision"].startswith("bf16") else "fp32"
        p = "fp32" if mode == "post" else prec
        gflops = r["images_per_s"] * 3 * fwd / 1e9
        print(f"  {mode:8s} {r['images_per_s']:8.1f} images/s   {gflops:7.1f} GFLOP/s"
              f" ({100 * gflops * 1e9 / peaks[p]:.0f} % of the {p} peak)"
              + (f"  [{r['precision']}]" if "precision" in r else "")
              + (f"   test acc after {args.accuracy_steps} steps {r['test_accuracy']:.4f}" if "test_accuracy" in r else ""),
              flush=True)
    ceiling = peaks[prec] / (3 * fwd)
    if res:
        print(f"  ceiling at the {prec} peak: {ceiling:.0f} images/s"
              + (f" = {ceiling / res['post']['images_per_s']:.2f}x the post's loop" if "post" in res else ""))
    if "arcdist" in res and "post" in res:
        print(f"  arcdist / post = {res['arcdist']['images_per_s'] / res['post']['images_per_s']:.2f}x")
    if "arcdist" in res and "bare" in res:
        print(f"  arcdist / bare = {res['arcdist']['images_per_s'] / res['bare']['images_per_s']:.2f}")
    if "ddp2" in res and "arcdist" in res:
        print(f"  2 ranks / 1 process = {res['ddp2']['images_per_s'] / res['arcdist']['images_per_s']:.2f}")
    if args.grid_estimate:
        grid_estimate(argv, peaks)
    return 0


def precision_table(argv: list[str]) -> None:
    """arcdist's step in fp32, bf16 (each NCHW and channels_last) and auto: which machine, which precision."""
    rows = [("fp32", ["no", "false"]), ("fp32 + channels_last", ["no", "true"]), ("bf16", ["bf16", "false"]),
            ("bf16 + channels_last", ["bf16", "true"]), ("auto", ["auto", "auto"])]
    print("| setting | images/s | resolved |")
    print("| --- | --- | --- |")
    for name, (mp, cl) in rows:
        r = _child(argv + ["--set", f"train.mixed_precision={mp}", "--set", f"train.channels_last={cl}"], "arcdist")
        print(f"| {name} | {r['images_per_s']:.0f} | {r['precision']} |", flush=True)


def grid_estimate(argv: list[str], peaks: dict) -> None:
    """Every post variant's train_epoch timed (run_grid_epochs); the grid's time at 100 epochs of 60,000
    images, one variant after another (side by side on one GPU, the grid runner can do better)."""
    from arcdist.model import describe
    from arcdist.variants import get_variant

    results = {k: v for k, v in _child(argv, "grid").items() if k != "rank"}
    total = flops = 0.0
    for name, r in results.items():
        seconds = 100 * 60000 / r["images_per_s"]
        fwd = describe(get_variant(name).config.model)["flops"]
        total, flops = total + seconds, flops + 100 * 60000 * 3 * fwd
        p = "bf16" if r["precision"].startswith("bf16") else "fp32"
        print(f"  {name:7s} {r['images_per_s']:9.0f} images/s  -> 100 epochs in {seconds / 60:6.1f} min  "
              f"({100 * r['images_per_s'] * 3 * fwd / peaks[p]:.0f} % of the {p} peak; {r['precision']}, "
              f"sync_every {r['sync_every']}, compile {r['compile']})", flush=True)
    print(f"  the post's grid, {len(results)} variants x 100 epochs, one after another: {total / 60:.1f} min "
          f"({flops / 1e15:.0f} PFLOP, {flops / total / 1e12:.1f} TFLOP/s on average)")


if __name__ == "__main__":
    sys.exit(main())
