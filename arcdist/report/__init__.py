"""One report for a grid: a self-contained HTML page, a markdown summary and a W&B Report spec.

    python -m arcdist.report runs/study                      # -> runs/study/report/{report.html,report.md,...}
    python -m arcdist.report runs/study --push               # also create the W&B Report (needs credentials)
    python -m arcdist.report --push-spec runs/study/report/wandb_report.json   # push a saved spec later
    python -m arcdist.report --wandb-group study --entity E --project P        # the same from W&B runs

Every statistic is over the seeds of a variant: the mean and the sample standard deviation (ddof=1);
with one seed the deviation is "n/a". The measured verdict follows the rule in `VERDICT_RULE`.
The W&B Report itself (spec, push, pull of a group) is arcdist.wandb_report; this module is its command line.
"""
from arcdist.figures import plt  # the figures' pyplot, for callers that close what they draw
from arcdist.report.cli import main, parse_args
from arcdist.report.pages import HEADINGS, IMAGES, LOSSES, build_report, grid_group, write_html, write_markdown
from arcdist.report.plots import curves_figure, draw_features, features_figure, last_features
from arcdist.report.stats import (POST, STATS, STD_NOTE, VERDICT_RULE, ReportError, display_row, fmt,
                                  load_grid, loss_row, mean_std, measured_verdict, noise_verdict, run_stats,
                                  summarise)

__all__ = ["plt", "HEADINGS", "IMAGES", "LOSSES", "POST", "STATS", "STD_NOTE", "VERDICT_RULE", "ReportError",
           "build_report", "curves_figure", "display_row", "draw_features", "features_figure", "fmt", "grid_group",
           "last_features", "load_grid", "loss_row", "main", "mean_std", "measured_verdict", "noise_verdict",
           "parse_args", "run_stats", "summarise", "write_html", "write_markdown"]
