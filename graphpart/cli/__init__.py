"""The `graphpart` command line: train, evaluate, predict, plan, graph, compare, bench, profile,
hessian."""

from __future__ import annotations

from graphpart.cli.commands import (
    cmd_compare,
    cmd_evaluate,
    cmd_graph,
    cmd_hessian,
    cmd_plan,
    cmd_predict,
    cmd_profile,
    cmd_train,
)
from graphpart.cli.flags import (
    COMMAND_DEFAULTS,
    COMMAND_KEYS,
    FLAGS,
    add_config_args,
    check_local_device,
    cli_overrides,
    load_cli_config,
)
from graphpart.cli.parser import BENCH_ALIASES, Parser, UsageError, bench_argv, build_parser
from graphpart.cli.program import entry, main

__all__ = [
    "BENCH_ALIASES",
    "COMMAND_DEFAULTS",
    "COMMAND_KEYS",
    "FLAGS",
    "Parser",
    "UsageError",
    "add_config_args",
    "bench_argv",
    "build_parser",
    "check_local_device",
    "cli_overrides",
    "cmd_compare",
    "cmd_evaluate",
    "cmd_graph",
    "cmd_hessian",
    "cmd_plan",
    "cmd_predict",
    "cmd_profile",
    "cmd_train",
    "entry",
    "load_cli_config",
    "main",
]
