"""Interactive 2-D feature explorer: one self-contained HTML page for a run folder or a grid folder.

    python -m arcdist.explore runs/A7-s0                  # -> runs/A7-s0/explore.html: raw and unit-circle panels
    python -m arcdist.explore runs/losses                 # -> runs/losses/report/explore.html: one panel per run
    python -m arcdist.explore runs/losses --every 5 --points 5000 --out /tmp/losses.html

Panels side by side share an epoch slider with play/pause; each panel draws its head's geometry of that epoch
(class directions W, where the margin is met, decision regions of W x + b, center loss's centers) on its own
axes. Hovering a point shows the test image, its label, the prediction and its angle to its class direction;
misclassified points are drawn as crosses; clicking a class in the legend hides it in every panel. The page is
plotly (plotly.js embedded, no network): features are stored per epoch as 16-bit codes over that epoch's range, predictions as 16-bit integers, and the
images once as a PNG sprite, so that a 12-run grid of 100 epochs fits the default 20 MB (`--max-mb`).
"""
from arcdist.explore.cli import main, parse_args
from arcdist.explore.features import (DEFAULT_POINTS, DEFAULT_MAX_MB, SPRITE_COLS, THUMB, MISSING, SAMPLE_SEED,
                                      WANDB_TABLE_ROWS, ExploreError, Series, read_series, predictions,
                                      angles_to_class, feature_rows, wandb_table, TABLE_COLUMNS, sample_points,
                                      pick_epochs, quantise, dequantise, sprite, load_images, Panel, find_panels,
                                      epoch_payload, estimate_bytes)
from arcdist.explore.page import build_page

__all__ = ["build_page", "main", "parse_args", "DEFAULT_POINTS", "DEFAULT_MAX_MB", "SPRITE_COLS", "THUMB", "MISSING",
           "SAMPLE_SEED", "WANDB_TABLE_ROWS", "ExploreError", "Series", "read_series", "predictions",
           "angles_to_class", "feature_rows", "wandb_table", "TABLE_COLUMNS", "sample_points", "pick_epochs",
           "quantise", "dequantise", "sprite", "load_images", "Panel", "find_panels", "epoch_payload",
           "estimate_bytes"]
