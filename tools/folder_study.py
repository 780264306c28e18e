"""Your own images in any shape, measured: folders written from MNIST and Fashion-MNIST, each trained as a user
would (`arcdist train --dataset folder --data-dir D`, A8's recipe), 3 seeds, the final epoch's accuracy, P@1 and
MAP@R; the table goes to results/folders/README.md's data file (rows.json) and is printed.

    python tools/folder_study.py --out /tmp/folders [--seeds 0,1,2] [--per-class 300,100] [--epochs 6]

The folders (tools/image_folder.py): `twenty` (the ten digits and the ten clothes), `five` (digits 0-4),
`colour48` (the digits tinted on a random background, 48 px JPEG) and the same images read as grey
(`--set model.in_channels=1`); `colour96` likewise at 96 px. Rows `twenty-3d` train the twenty classes in 3-D, `r18-colour96` torchvision's
ResNet-18 (`--variant R18`) on the 96 px colour digits, `colour48-30ep` the 48 px ones for 30 epochs, `plain48` the digits at 48 px untinted (grey), `ten` the ten digits at 28 px (the same images' own size),
`small10` and `mid10` the ten digits with 20 and 100 train images per class (--per-class does not apply to them);
`fashion` and `fashion96` the ten Fashion-MNIST classes at 28 px and tinted at 96 px (the rules' second dataset).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import image_folder  # noqa: E402

FOLDERS = {"twenty": dict(names=["mnist", "fashion-mnist"]),
           "five": dict(names=["mnist"], classes=[str(d) for d in range(5)]),
           "colour48": dict(names=["mnist"], tinted=True, size=48, fmt="jpg"),
           "colour96": dict(names=["mnist"], tinted=True, size=96, fmt="jpg"),
           "plain48": dict(names=["mnist"], size=48, fmt="jpg"),
           "ten": dict(names=["mnist"]),
           "small10": dict(names=["mnist"], per_class=(20, 100)),  # 200 train images
           "mid10": dict(names=["mnist"], per_class=(100, 100)),  # 1,000
           "fashion": dict(names=["fashion-mnist"]),  # a second dataset for the batch and net-size rules
           "fashion96": dict(names=["fashion-mnist"], tinted=True, size=96, fmt="jpg")}
ROWS = [("twenty", "twenty", []), ("twenty-3d", "twenty", ["--set", "model.feature_dim=3"]), ("five", "five", []),
        ("colour48", "colour48", []), ("grey48", "colour48", ["--set", "model.in_channels=1"]),
        ("colour96", "colour96", []), ("grey96", "colour96", ["--set", "model.in_channels=1"]),
        ("r18-colour96", "colour96", ["--variant", "R18"]), ("colour48-30ep", "colour48", ["--epochs", "30"]),
        ("plain48", "plain48", []), ("ten", "ten", []), ("small10", "small10", []), ("mid10", "mid10", []),
        ("fashion", "fashion", []), ("fashion96", "fashion96", [])]


def main() -> int:
    from arcdist.cli import ArgumentParser  # a bad argument is one line, exit 2

    ap = ArgumentParser(prog="tools/folder_study.py", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--per-class", default="300,100")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rows", default=",".join(r for r, _, _ in ROWS),
                    help=f"comma-separated rows (default all: {', '.join(r for r, _, _ in ROWS)})")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a --set for every run (repeatable)")
    ap.add_argument("--variant", default="", help="the variant of every run (given after a row's own arguments: it wins)")
    ap.add_argument("--tag", default="", help="appended to each row's name (runs with --set)")
    a = ap.parse_args()
    data = os.environ.get("ARCDIST_DATA_DIR")
    if not data:
        print("folder_study: set ARCDIST_DATA_DIR to a folder holding MNIST/ and FashionMNIST/", file=sys.stderr)
        return 2
    per = tuple(int(v) for v in a.per_class.split(","))
    wanted = a.rows.split(",")
    unknown = [r for r in wanted if r not in {name for name, _, _ in ROWS}]
    if unknown:
        ap.error(f"--rows: no row {', '.join(unknown)}; the rows are {', '.join(r for r, _, _ in ROWS)}")
    results = []
    sets = [a for s in a.sets for a in ("--set", s)] + (["--variant", a.variant] if a.variant else [])
    for row, folder, extra in ((r + a.tag, f, [*e, *sets]) for r, f, e in ROWS if r in wanted):
        d = a.out / "data" / folder
        if not d.exists():
            image_folder.write_mixed(d, data_dir=data, **{"per_class": per, **FOLDERS[folder]})
        for seed in map(int, a.seeds.split(",")):
            run = a.out / "runs" / f"{row}-s{seed}"
            cmd = [sys.executable, str(ROOT / "arcdist" / "train.py"), "--dataset", "folder", "--data-dir", str(d),
                   "--epochs", str(a.epochs), "--seed", str(seed), "--output-dir", str(run), "--wandb", "disabled",
                   "--no-progress", "--plot-every", str(a.epochs), *extra]
            started = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            s = json.loads((run / "summary.json").read_text())
            cfg = json.loads((run / "config.json").read_text())["config"]
            results.append(dict(row=row, seed=seed, accuracy=s["final_accuracy"], p_at_1=s.get("precision_at_1"),
                                map_at_r=s.get("mean_average_precision_at_r"), classes=cfg["head"]["num_classes"],
                                channels=cfg["model"]["in_channels"], size=cfg["model"]["image_size"],
                                dim=cfg["model"]["feature_dim"], seconds=round(time.time() - started, 1)))
            print(json.dumps(results[-1]), flush=True)
    (a.out / f"rows{a.tag}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
