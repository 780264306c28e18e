"""Images per second that a folder's decoder (arcdist.datasets.folder.Decoder) turns into a run's pixels, for
photo-sized JPEGs:

    python bench/decode.py [--files 40] [--width 4000 --height 3000] [--sizes 28,96,224] [--repeats 3]

Writes `--files` synthetic photo-like JPEGs (gradients, edges and noise, quality 90) into a temporary folder and
decodes them in one process, as `data.workers=0` does: arcdist's decoder (a JPEG decoded at 1/2, 1/4 or 1/8
scale where that covers the run's size) against torchvision's full decode (`Image.convert`, then the same
resize and centre crop). Prints the median over the repeats. Name the CPU beside the figure:
`grep -m1 'model name' /proc/cpuinfo`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from arcdist.datasets.folder import Decoder  # noqa: E402


def full_decode(path: str, size: int):
    """torchvision's way: decode every pixel, then resize the shorter side and cut the centre square."""
    from torchvision.transforms import v2

    with Image.open(path) as img:
        img = img.convert("RGB")
        return v2.functional.pil_to_tensor(v2.functional.center_crop(v2.functional.resize(img, size, antialias=True),
                                                                    size))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--sizes", default="28,96,224")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        yy, xx = np.mgrid[0:a.height, 0:a.width]
        paths = []
        for i in range(a.files):
            pix = np.stack([xx * (i + 1) % 256, yy * 255 // a.height, (xx // 97 + yy // 89 + i) % 2 * 200], -1)
            pix = np.clip(pix + rng.normal(0, 12, pix.shape), 0, 255).astype(np.uint8)
            paths.append(f"{tmp}/{i:03d}.jpg")
            Image.fromarray(pix).save(paths[-1], quality=90)
        print(f"{a.files} JPEGs of {a.width} x {a.height}, one process")
        for size in (int(s) for s in a.sizes.split(",")):
            decode = Decoder(3, size)
            for name, fn in (("arcdist", decode), ("full decode", lambda q: full_decode(q, size))):
                times = []
                for _ in range(a.repeats):
                    t = time.perf_counter()
                    for q in paths:
                        fn(q)
                    times.append(time.perf_counter() - t)
                print(f"  {size:4d} px  {name:12s} {a.files / statistics.median(times):7.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
