"""Plots, summary tables, paired statistics and the HTML report from run directories."""

from balseg.report.build import make_report
from balseg.report.paired import PairedRow
from balseg.report.runs import ReportError, ReportWarning, RunResults, read_run, run_label
from balseg.report.summary import SummaryRow, summarize

__all__ = [
    "PairedRow",
    "ReportError",
    "ReportWarning",
    "RunResults",
    "SummaryRow",
    "make_report",
    "read_run",
    "run_label",
    "summarize",
]
