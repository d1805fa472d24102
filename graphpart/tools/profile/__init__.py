"""Memory profiling: predicted vs measured per stage, resident memory, timelines, Chrome trace."""

from graphpart.tools.profile.command import run_profile
from graphpart.tools.profile.compare import compare, comparison_table, rss_table
from graphpart.tools.profile.measure import Measurement, measure, step_batches
from graphpart.tools.profile.overhead import ledger_mark_cost, overhead
from graphpart.tools.profile.plots import COLORS, plot_stage
from graphpart.tools.profile.sample import RssSampler
from graphpart.tools.profile.trace import chrome_trace, spans

__all__ = [
    "COLORS",
    "Measurement",
    "RssSampler",
    "chrome_trace",
    "compare",
    "comparison_table",
    "ledger_mark_cost",
    "measure",
    "overhead",
    "plot_stage",
    "rss_table",
    "run_profile",
    "spans",
    "step_batches",
]
