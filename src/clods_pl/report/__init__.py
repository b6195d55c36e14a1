"""Metrics tables, plots, rollout videos and the run report (``report.md``)."""

from clods_pl.report.build import build_report
from clods_pl.report.plots import plot_rmse_over_steps
from clods_pl.report.tables import method_label, rollout_table_markdown
from clods_pl.report.video import write_rollout_video

__all__ = ["build_report", "plot_rmse_over_steps", "method_label", "rollout_table_markdown", "write_rollout_video"]
