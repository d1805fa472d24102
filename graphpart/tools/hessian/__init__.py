"""`graphpart hessian`: the Hessian spectrum by HVPs, and one HVP's cost against a gradient."""

from __future__ import annotations

import argparse

from graphpart.errors import GraphpartError
from graphpart.run.config import Config


def add_hessian_arguments(p: argparse.ArgumentParser) -> None:
    """The command's own flags (besides the config arguments cli.py adds)."""


def run_hessian(cfg: Config, args: argparse.Namespace) -> int:
    raise GraphpartError("graphpart hessian is being written (issue 12)")
