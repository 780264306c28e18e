"""How far each learned class direction moves per epoch, from a run's saved W (features/test-epoch-*.npz).

    python tools/w_drift.py RUN_DIR [RUN_DIR ...]   # one markdown row per run

For each epoch after the first: the mean and the largest angle (degrees) between a class's direction at the end
of that epoch and at the end of the one before, over the 10 classes; then the test features' intra-class spread
at the last epoch for scale (the mean angle of a test feature to its class's mean direction). A frozen W moves 0.
And what a wobble of W that size could change, at the last epoch (angles to W's directions, the nearest-direction
rule): how many test features lie within 1 degree of a boundary (half the gap between their two nearest
directions), and how deep the misclassified ones sit past the boundary with their predicted class (median, half
the gap between the angle to their own class's direction and to the predicted one).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((unit(a) * unit(b)).sum(-1), -1.0, 1.0)))


def drift(run: Path) -> dict:
    files = sorted((run / "features").glob("test-epoch-*.npz"))
    if len(files) < 2:
        raise SystemExit(f"w_drift: {run} has {len(files)} saved epochs of features; run it with --plot-every 1")
    ws = [np.load(f)["W"].astype(np.float64) for f in files]
    epochs = [int(np.load(f)["epoch"]) for f in files]
    moved = [angle_deg(a, b) for a, b in zip(ws, ws[1:])]
    last = np.load(files[-1])
    feats, labels = last["features"].astype(np.float64), last["labels"]
    spread = np.mean([angle_deg(feats[labels == c], unit(feats[labels == c]).mean(0)).mean()
                      for c in np.unique(labels)])
    to_w = angle_deg(feats[:, None, :], ws[-1][None, :, :])  # (N, classes)
    nearest = np.sort(to_w, 1)
    pred = to_w.argmin(1)
    wrong = pred != labels
    depth = (to_w[wrong, labels[wrong]] - to_w[wrong, pred[wrong]]) / 2
    summary = json.loads((run / "summary.json").read_text())
    return dict(run=run.name, epochs=epochs[1:], mean=[float(m.mean()) for m in moved],
                max=[float(m.max()) for m in moved], spread=float(spread), accuracy=summary["final_accuracy"],
                near=int(((nearest[:, 1] - nearest[:, 0]) / 2 < 1.0).sum()), errors=int(wrong.sum()),
                depth=float(np.median(depth)) if wrong.any() else 0.0)


def main(argv: list[str]) -> int:
    rows = [drift(Path(a)) for a in argv]
    print("| run | class directions moved per epoch, mean (max), deg: epochs " + f"{rows[0]['epochs'][0]}-"
          f"{rows[0]['epochs'][-1]} | intra spread at the end | test features within 1° of a boundary | "
          "errors: count, median depth past the boundary | final accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        moves = " ".join(f"{m:.2f} ({x:.2f})" for m, x in zip(r["mean"], r["max"]))
        print(f"| {r['run']} | {moves} | {r['spread']:.2f}° | {r['near']} | {r['errors']}, {r['depth']:.1f}° | "
              f"{100 * r['accuracy']:.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
