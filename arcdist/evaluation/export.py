"""Export a trained run's backbone, its input normalisation inside: `arcdist export RUN_DIR --format F --out FILE`.

    arcdist export runs/A8-s0 --format onnx --out a8.onnx               # onnxruntime, any ONNX runtime
    arcdist export runs/A8-s0 --format torchscript --out a8.pt          # torch.jit.load, no arcdist needed

    arcdist export runs/A8-s0 --format onnx --out a8.onnx --scores      # and the class scores: argmax = class

Input: float images in [0, 1], (N, C, H, W) at the run's channels and size, any batch size N. Output: the (N, D)
features, equal to `arcdist embed`'s within 1e-4 (tests/test_embed.py); with --scores also `scores` (N, classes),
the head's prediction rule (`arcdist.evaluation.embed.Classifier`), whose argmax is embed's `predicted`. The last
checkpoint unless --epoch N.
ONNX needs the `onnx` and `onnxscript` packages (`pip install "arcdist[export]"`); without them the command says so
in one line and writes nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from arcdist import errors
from arcdist.cli import ArgumentParser
from arcdist.config import ConfigError
from arcdist.evaluation.embed import load_classifier, load_embedder
from arcdist.errors import Exit

FORMATS = {"onnx": ("onnx", "onnxscript"), "torchscript": ()}  # format -> the packages it needs
OPSET = 18


def export(run_dir: Path, fmt: str, out: Path, epoch: int | None = None, scores: bool = False) -> dict:
    """Write the exported model to `out` (whole or not at all); returns its input shape and the checkpoint."""
    missing = [m for m in FORMATS[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"--format {fmt} needs {' and '.join(missing)}, not installed; "
                          f"pip install \"arcdist[export]\" (or {' '.join(missing)})")
    cfg, model, path = load_classifier(run_dir, epoch) if scores else load_embedder(run_dir, epoch)
    outputs = ["features", "scores"] if scores else ["features"]
    example = torch.rand(2, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if fmt == "onnx":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=outputs,
                              dynamic_shapes={"images": {0: batch}}, opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False)
        else:
            with torch.no_grad():
                torch.jit.save(torch.jit.trace(model, example), str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return dict(out=str(out), input=("N", cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size),
                dim=cfg.model.feature_dim, checkpoint=str(path),
                classes=model.num_classes if scores else None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="arcdist export", description=__doc__)
    p.add_argument("run_dir", help="a run folder (config.json, checkpoints/)")
    p.add_argument("--format", choices=tuple(FORMATS), required=True)
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--epoch", type=int, default=None, help="the checkpoint of epoch N (default: the newest)")
    p.add_argument("--scores", action="store_true",
                   help="a second output, scores (N, classes) by the head's prediction rule: argmax is the class")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        done = export(Path(args.run_dir), args.format, Path(args.out), args.epoch, args.scores)
    except errors.BadInput as e:
        print(f"arcdist export: error: {e}", file=sys.stderr)
        return Exit.BAD_INPUT
    n, c, h, w = done["input"]
    scores = f", scores (N, {done['classes']})" if args.scores else ""
    print(f"{args.format}: images ({n}, {c}, {h}, {w}) in [0, 1] -> features (N, {done['dim']}){scores}, "
          f"by {done['checkpoint']} -> {done['out']}")
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
