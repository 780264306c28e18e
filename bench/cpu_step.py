"""A CPU training step with and without arcdist's two CPU fixes, in alternating rounds.

    python bench/cpu_step.py                                  # A8, the probe's precision choice forced to bf16 + CL
    python bench/cpu_step.py --precision no                   # fp32 + channels_last
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/cpu_step.py --precision no

The fixes (both measured by this script):
  matmul   model.Conv2d computes a convolution whose kernel covers its unpadded input as a matrix product
           (oneDNN's backward for that shape used one core); "conv" is torch's nn.Conv2d for every layer
  malloc   hardware.tune_malloc's glibc thresholds (freed activations stay in the process); "glibc" leaves
           glibc's defaults, so every step's large tensors come back as fresh pages (minor page faults)

Each of the four settings runs in its own process (malloc's thresholds are process-wide), --rounds times in
turn, each round --steps timed steps of forward + backward + both optimizer steps on one real batch after 3
warm-up steps. Prints, per setting, the median and the range of images/s over the rounds and the minor page
faults per step. This machine's speed drifts by +-20 % within minutes, hence the interleaving and the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(variant: str, precision: str, matmul: bool, malloc: bool, steps: int, threads: int) -> dict:
    """Time `steps` steps in this process with the given fixes; images/s and minor faults per step."""
    import resource
    import tempfile

    import torch
    import torch.nn.functional as F

    from arcdist import hardware, model
    from arcdist.train import Trainer, setup_accelerator

    if not malloc:
        hardware.tune_malloc = lambda: False  # configure_cpu calls it; glibc's defaults stay
    if not matmul:
        model.Conv2d.forward = torch.nn.Conv2d.forward
    cfg = config(variant, precision, threads)
    cfg, acc, _ = setup_accelerator(cfg)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()), acc, no_progress=True)
    bs = cfg.data.batch_size
    x, y = trainer.train_data.batch(torch.arange(bs))
    x = x.contiguous(memory_format=torch.channels_last)
    net, head = acc.unwrap_model(trainer.backbone), acc.unwrap_model(trainer.head)
    opt_net, opt_head = trainer.opt_net.optimizer, trainer.opt_head.optimizer

    def step():
        with acc.autocast():
            feats = net(x)
        F.cross_entropy(head(feats, y, 1.0), y).backward()
        opt_net.step()
        opt_head.step()
        opt_net.zero_grad(set_to_none=True)
        opt_head.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    return dict(images_per_s=steps * bs / seconds,
                faults_per_step=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps)


def config(variant: str, precision: str, threads: int):
    """The variant at this precision and thread count, its image shape fitted to MNIST as `arcdist train` does."""
    from arcdist import shape
    from arcdist.config import apply_overrides
    from arcdist.variants import get_variant

    sets = [f"train.mixed_precision={precision}", "train.channels_last=true", f"train.threads={threads}"]
    cfg = apply_overrides(get_variant(variant).config, sets)
    cfg = replace(cfg, data=replace(cfg.data, data_dir=os.environ.get("ARCDIST_DATA_DIR", str(ROOT / "data"))))
    return shape.fit_model(cfg, shape.explicit_keys(sets))


SETTINGS = {"conv, glibc": (False, False), "matmul, glibc": (True, False), "conv, malloc": (False, True),
            "matmul, malloc (arcdist)": (True, True)}


def main(argv: list[str] | None = None) -> int:
    from arcdist.cli import ArgumentParser  # a bad argument is one line, exit 2
    from arcdist.errors import BadInput

    p = ArgumentParser(prog="bench/cpu_step.py", description=__doc__)
    p.add_argument("--variant", default="A8")
    p.add_argument("--precision", default="bf16", help="train.mixed_precision: bf16 or no (fp32)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error(f"--steps {args.steps} --rounds {args.rounds}: expected 1 or more of each")
    try:
        config(args.variant, args.precision, args.threads)
    except BadInput as e:
        p.error(str(e))
    if args.one:
        matmul, malloc = SETTINGS[args.one]
        print(json.dumps(one(args.variant, args.precision, matmul, malloc, args.steps, args.threads)), flush=True)
        return 0
    from arcdist.hardware import cpu_flags, cpu_model

    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    limits = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)]
    print(f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores, flags {' '.join(isa)}"
          + (f", limited by {' '.join(limits)}" if limits else ""))
    print(f"variant {args.variant}, precision {args.precision} + channels_last, {args.rounds} rounds x {args.steps} steps")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    res: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    for _ in range(args.rounds):
        for name in SETTINGS:
            cmd = [sys.executable, __file__, "--variant", args.variant, "--precision", args.precision,
                   "--steps", str(args.steps), "--threads", str(args.threads), "--one", name]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                raise SystemExit(f"cpu_step: {name} failed:\n{out.stderr[-2000:]}")
            res[name].append(json.loads(lines[-1]))
    base = statistics.median(r["images_per_s"] for r in res["conv, glibc"])
    print("| setting | images/s, median (range) | against neither fix | minor page faults per step |")
    print("| --- | --- | --- | --- |")
    for name, rs in res.items():
        ips = [r["images_per_s"] for r in rs]
        med = statistics.median(ips)
        print(f"| {name} | {med:.0f} ({min(ips):.0f}-{max(ips):.0f}) | {med / base:.2f}x | "
              f"{statistics.median(r['faults_per_step'] for r in rs):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
