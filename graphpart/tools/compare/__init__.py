"""`graphpart compare` and `graphpart plan --auto`: the strategies side by side, measured."""

from graphpart.tools.compare.auto import run_auto
from graphpart.tools.compare.command import run_compare
from graphpart.tools.compare.strategies import LR_RULES

__all__ = ["LR_RULES", "run_auto", "run_compare"]
