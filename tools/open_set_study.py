"""Where unseen classes land: train on half the classes, judge retrieval on the other half (Musgrave et al. 2020's
protocol), A8's recipe (6 epochs) with `--set data.train_classes=...`, 3 seeds a row, and three baselines by the
same retrieval code (arcdist.evaluation.retrieval): raw pixels, their PCA to the feature size (fitted on the seen classes'
training images) and A8's backbone untrained.

    python tools/open_set_study.py --out /tmp/openset [--seeds 0,1,2] [--epochs 6] [--rows ROW,ROW] [--baselines]
                                   [--set head.margin=0.2]
    python tools/open_set_study.py --out /tmp/openset --table results/open-set/table.md

A row is DATASET-HEAD-dDIM-SPLIT: SPLIT `lo` trains classes 0-4 and judges 5-9, `hi` the swap. The rows run in
the order of ROWS (the most asked-for first); each finished run is appended to OUT/rows.jsonl at once, so a study
cut short keeps what it measured. Baselines go to OUT/baselines.jsonl.
"""
from __future__ import annotations

import json
import os
import re
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


def train(out: Path, row: str, seed: int, epochs: int, sets: tuple[str, ...] = ()) -> dict:
    dataset, head, dim, split = parse_row(row)
    run = out / "runs" / f"{row}-s{seed}"
    plots = epochs if (dim == 2 and seed == 0) else 0  # the 2-D runs' circles, once a row
    cmd = [sys.executable, str(ROOT / "arcdist" / "train.py"), "--variant", "A8", "--dataset", dataset,
           "--epochs", str(epochs), "--seed", str(seed), "--output-dir", str(run), "--wandb", "disabled",
           "--no-progress", "--plot-every", str(plots), "--set", f"data.train_classes={','.join(map(str, SPLITS[split]))}",
           "--set", f"model.feature_dim={dim}"] + (["--set", f"head.kind={head}"] if head != "arcface" else []) + \
        [arg for s in sets for arg in ("--set", s)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        raise SystemExit(f"{row} seed {seed}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    s = json.loads((run / "summary.json").read_text())
    return dict(row=row, seed=seed, dataset=dataset, head=head, dim=dim, split=split, seen_accuracy=s["final_accuracy"],
                seen_p_at_1=s.get("precision_at_1"), unseen_p_at_1=s["unseen_precision_at_1"],
                unseen_r_precision=s["unseen_r_precision"], unseen_map_at_r=s["unseen_mean_average_precision_at_r"],
                unseen_auroc=s["unseen_auroc"], seconds=round(time.time() - started, 1), sets=list(sets))


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


def landing(run: Path) -> tuple[float, dict[int, tuple[int, float]]]:
    """From a run's last test features: the AUROC of the feature norm telling seen from unseen (a second score
    beside the cosine's), and for each unseen class the seen class most of its images are predicted as, with the
    fraction."""
    import numpy as np

    from arcdist.evaluation.verification import roc_auc
    from arcdist.heads import predicted_labels

    f = np.load(run / "features.npz")
    seen = np.isin(f["labels"], f["rows"])
    norm_auroc = roc_auc(np.linalg.norm(f["features"], axis=1).astype(np.float64), seen)
    pred = predicted_labels(f["features"], {k: f[k] for k in ("W", "b", "rows", "sub_centers") if k in f}).numpy()
    lands = {}
    for c in sorted(set(f["labels"][~seen].tolist())):
        values, counts = np.unique(pred[f["labels"] == c], return_counts=True)
        lands[c] = (int(values[counts.argmax()]), float(counts.max() / counts.sum()))
    return norm_auroc, lands


def table(out: Path) -> str:
    """The study's markdown: one line per row (mean ± sample std over its seeds), the baselines, and where each
    unseen class lands in the 2-D runs."""
    import statistics

    def ms(values: list[float], scale: float = 100.0) -> str:
        v = [scale * x for x in values]
        return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

    found = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    lines = ["| dataset | head | D | trains | seeds | seen acc % | unseen P@1 % | unseen R-prec % | unseen MAP@R % | "
             "unseen AUROC (cos) % | AUROC (norm) % |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lands: dict[str, list] = {}
    for row in dict.fromkeys(r["row"] for r in found):
        rs = [r for r in found if r["row"] == row]
        norms = []
        for r in rs:
            norm_auroc, land = landing(out / "runs" / f"{row}-s{r['seed']}")
            norms.append(norm_auroc)
            if r["dim"] == 2:
                lands.setdefault(row, []).append(land)
        r0 = rs[0]
        lines.append(f"| {r0['dataset']} | {r0['head']} | {r0['dim']} | {'0-4' if r0['split'] == 'lo' else '5-9'} | "
                     f"{len(rs)} | {ms([r['seen_accuracy'] for r in rs])} | {ms([r['unseen_p_at_1'] for r in rs])} | "
                     f"{ms([r['unseen_r_precision'] for r in rs])} | {ms([r['unseen_map_at_r'] for r in rs])} | "
                     f"{ms([r['unseen_auroc'] for r in rs])} | {ms(norms)} |")
    if (out / "baselines.jsonl").exists():
        base = [json.loads(line) for line in (out / "baselines.jsonl").read_text().splitlines()]
        lines += ["", "| dataset | baseline | D | judged on | seeds | unseen P@1 % | unseen R-prec % | unseen MAP@R % |",
                  "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        keys = dict.fromkeys((b["dataset"], b["baseline"], b["dim"], b["split"]) for b in base)
        for ds, name, dim, split in keys:
            bs = [b for b in base if (b["dataset"], b["baseline"], b["dim"], b["split"]) == (ds, name, dim, split)]
            lines.append(f"| {ds} | {name} | {dim} | {'5-9' if split == 'lo' else '0-4'} | {len(bs)} | "
                         f"{ms([b['precision_at_1'] for b in bs])} | {ms([b['r_precision'] for b in bs])} | "
                         f"{ms([b['mean_average_precision_at_r'] for b in bs])} |")
    if lands:
        lines += ["", "Where each unseen class lands in 2-D: unseen class -> the seen class most of its test images are "
                  "predicted as (that share), per seed.", "",
                  "| run | first unseen | second | third | fourth | fifth |", "| --- | --- | --- | --- | --- | --- |"]
        for row, per_seed in lands.items():
            for seed, land in enumerate(per_seed):
                lines.append(f"| {row} s{seed} | " + " | ".join(f"{c} -> {p} ({100 * share:.0f} %)"
                                                                for c, (p, share) in land.items()) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from arcdist.cli import ArgumentParser  # a bad argument is one line, exit 2

    ap = ArgumentParser(prog="tools/open_set_study.py", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rows", default=",".join(rows()),
                    help=f"comma-separated DATASET-HEAD-dDIM-SPLIT rows (dataset mnist or fashion-mnist, head one "
                         f"of {', '.join(HEADS)}, split lo (trains 0-4) or hi (5-9)); default: {', '.join(rows())}")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="a --set for every run, after the row's own (repeatable; give each its own --out)")
    ap.add_argument("--baselines", action="store_true", help="compute the baselines (no training)")
    ap.add_argument("--table", type=Path, help="write the study's markdown table to this file (no training)")
    a = ap.parse_args()
    for row in a.rows.split(","):
        parts = row.split("-")
        ok = len(parts) >= 4 and "-".join(parts[:-3]) in ("mnist", "fashion-mnist") and parts[-3] in HEADS and \
            re.fullmatch(r"d\d+", parts[-2]) and int(parts[-2][1:]) >= 2 and parts[-1] in SPLITS
        if not ok:
            ap.error(f"--rows: {row!r} is no DATASET-HEAD-dDIM-SPLIT row, e.g. mnist-arcface-d2-lo")
    if not os.environ.get("ARCDIST_DATA_DIR"):
        print("open_set_study: set ARCDIST_DATA_DIR to a folder holding MNIST/ and FashionMNIST/", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(v) for v in a.seeds.split(",")]
    if a.table:
        a.table.parent.mkdir(parents=True, exist_ok=True)
        a.table.write_text(table(a.out))
        print(a.table.read_text())
        return 0
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
            result = train(a.out, row, seed, a.epochs, tuple(a.sets))
            with (a.out / "rows.jsonl").open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
