"""Plots, summary tables and the HTML report from run directories."""

from balseg.report.build import make_report
from balseg.report.runs import ReportError, ReportWarning, RunData, load_run, run_label
from balseg.report.summary import SummaryRow, summarize

__all__ = [
    "ReportError",
    "ReportWarning",
    "RunData",
    "SummaryRow",
    "load_run",
    "make_report",
    "run_label",
    "summarize",
]
