"""Where unseen classes land: train on half the classes, judge retrieval on the other half (Musgrave et al. 2020's
protocol), A8's recipe (6 epochs) with `--set data.train_classes=...`, 3 seeds a row, and three baselines by the
same retrieval code (arcdist.evaluation.retrieval): raw pixels, their PCA to the feature size (fitted on the seen classes'
training images) and A8's backbone untrained.

    python tools/open_set_study.py --out /tmp/openset [--seeds 0,1,2] [--epochs 6] [--rows ROW,ROW] [--baselines]

A row is DATASET-HEAD-dDIM-SPLIT: SPLIT `lo` trains classes 0-4 and judges 5-9, `hi` the swap. The rows run in
the order of ROWS (the most asked-for first); each finished run is appended to OUT/rows.jsonl at once, so a study
cut short keeps what it measured. Baselines go to OUT/baselines.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPLITS = {"lo": (0, 1, 2, 3, 4), "hi": (5, 6, 7, 8, 9)}
DIMS = (2, 3, 16, 128)
HEADS = ("arcface", "cosface", "sphereface", "softmax", "center")


def rows() -> list[str]:
    """The study's rows, the most asked-for first: ArcFace's sizes on MNIST, the five heads at 2 and 128, then
    Fashion-MNIST, then the swapped split."""
    out = [f"mnist-arcface-d{d}-lo" for d in DIMS]
    out += [f"mnist-{h}-d{d}-lo" for d in (2, 128) for h in HEADS if h != "arcface"]
    out += [f"fashion-mnist-arcface-d{d}-lo" for d in DIMS]
    out += [f"{ds}-arcface-d{d}-hi" for ds in ("mnist", "fashion-mnist") for d in DIMS]
    return out


def parse_row(row: str) -> tuple[str, str, int, str]:
    *ds, head, dim, split = row.split("-")
    return "-".join(ds), head, int(dim[1:]), split


def train(out: Path, row: str, seed: int, epochs: int) -> dict:
    dataset, head, dim, split = parse_row(row)
    run = out / "runs" / f"{row}-s{seed}"
    plots = epochs if (dim == 2 and seed == 0) else 0  # the 2-D runs' circles, once a row
    cmd = [sys.executable, str(ROOT / "arcdist" / "train.py"), "--variant", "A8", "--dataset", dataset,
           "--epochs", str(epochs), "--seed", str(seed), "--output-dir", str(run), "--wandb", "disabled",
           "--no-progress", "--plot-every", str(plots), "--set", f"data.train_classes={','.join(map(str, SPLITS[split]))}",
           "--set", f"model.feature_dim={dim}"] + (["--set", f"head.kind={head}"] if head != "arcface" else [])
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        raise SystemExit(f"{row} seed {seed}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    s = json.loads((run / "summary.json").read_text())
    return dict(row=row, seed=seed, dataset=dataset, head=head, dim=dim, split=split, seen_accuracy=s["final_accuracy"],
                seen_p_at_1=s.get("precision_at_1"), unseen_p_at_1=s["unseen_precision_at_1"],
                unseen_r_precision=s["unseen_r_precision"], unseen_map_at_r=s["unseen_mean_average_precision_at_r"],
                unseen_auroc=s["unseen_auroc"], seconds=round(time.time() - started, 1))


def baselines(out: Path, seeds: list[int]) -> None:
    """Raw pixels, PCA to each size, and the untrained A8 backbone at each size, on each dataset and split."""
    import torch

    from arcdist.data import load_dataset, resolve_data_dir
    from arcdist.model import build_backbone
    from arcdist.evaluation.retrieval import retrieval_metrics
    from arcdist.variants import get_variant

    path = out / "baselines.jsonl"
    cfg = get_variant("A8").config
    for dataset in ("mnist", "fashion-mnist"):
        s = load_dataset(dataset, resolve_data_dir(None), download=False)
        from arcdist.datasets import dataset_spec

        spec = dataset_spec(dataset)
        mean, std = spec.mean[0] * 255, spec.std[0] * 255
        for split, seen in SPLITS.items():
            unseen = ~torch.isin(s.test_y, torch.tensor(seen))
            x = (s.test_x[unseen].float() - mean) / std
            y = s.test_y[unseen]
            fit = (s.train_x[torch.isin(s.train_y, torch.tensor(seen))].float() - mean) / std
            found = [dict(dataset=dataset, split=split, baseline="pixels", dim=784, seed=None,
                          **retrieval_metrics(x.flatten(1), y))]
            centre = fit.flatten(1).mean(0)
            _, _, v = torch.pca_lowrank(fit.flatten(1) - centre, q=max(DIMS), center=False, niter=4)
            for d in DIMS:
                found.append(dict(dataset=dataset, split=split, baseline="pca", dim=d, seed=None,
                                  **retrieval_metrics((x.flatten(1) - centre) @ v[:, :d], y)))
                for seed in seeds:
                    torch.manual_seed(seed)
                    from dataclasses import replace

                    net = build_backbone(replace(cfg.model, feature_dim=d)).eval()
                    with torch.no_grad():
                        feats = torch.cat([net(b) for b in x.split(500)])
                    found.append(dict(dataset=dataset, split=split, baseline="untrained", dim=d, seed=seed,
                                      **retrieval_metrics(feats, y)))
            with path.open("a") as f:
                for r in found:
                    f.write(json.dumps(r) + "\n")
            print(f"baselines {dataset} {split}: {len(found)} rows", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rows", default=",".join(rows()))
    ap.add_argument("--baselines", action="store_true", help="compute the baselines (no training)")
    a = ap.parse_args()
    if not os.environ.get("ARCDIST_DATA_DIR"):
        print("open_set_study: set ARCDIST_DATA_DIR to a folder holding MNIST/ and FashionMNIST/", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(v) for v in a.seeds.split(",")]
    if a.baselines:
        baselines(a.out, seeds)
        return 0
    done = set()
    if (a.out / "rows.jsonl").exists():  # a study resumed: the runs already measured are kept
        done = {(r["row"], r["seed"]) for r in map(json.loads, (a.out / "rows.jsonl").read_text().splitlines())}
    for row in a.rows.split(","):
        for seed in seeds:
            if (row, seed) in done:
                continue
            result = train(a.out, row, seed, a.epochs)
            with (a.out / "rows.jsonl").open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
