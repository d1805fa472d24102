"""The argument parser: every subcommand with its own flags, and the older `bench` spellings."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from graphpart import __version__
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
from graphpart.cli.flags import add_config_args
from graphpart.errors import GraphpartError
from graphpart.tools.bench.cli import add_step_arguments, run_step
from graphpart.tools.bench.value_and_grad import add_value_and_grad_arguments, run_value_and_grad
from graphpart.tools.bench_pipeline.cli import add_pipeline_arguments, run_pipeline
from graphpart.tools.compare import LR_RULES
from graphpart.tools.hessian import add_hessian_arguments


class UsageError(GraphpartError):
    """A command line argparse refused: printed as one line like any bad input (exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, `graphpart: error: MESSAGE (see PROG --help)`,
    instead of the whole usage; subcommands' parsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


BENCH_ALIASES = {"--pipeline": "pipeline"}


def bench_argv(argv: list[str], kinds: Any) -> list[str]:
    """`graphpart bench [--pipeline] [--] OPTIONS` (the older spellings) as
    `graphpart bench KIND OPTIONS`: no kind means `step`."""
    i = next((j for j, a in enumerate(argv) if not a.startswith("-")), None)
    if i is None or argv[i] != "bench":
        return argv
    head, rest = argv[: i + 1], argv[i + 1 :]
    if rest[:1] and rest[0] in kinds:
        kind, rest = rest[0], rest[1:]
    elif any(a in ("-h", "--help") for a in rest) and not any(a in BENCH_ALIASES for a in rest):
        return argv  # `graphpart bench --help`: the list of benchmarks
    else:
        kind = next((BENCH_ALIASES[a] for a in rest if a in BENCH_ALIASES), "step")
        rest = [a for a in rest if a not in BENCH_ALIASES]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return [*head, kind, *rest]


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="graphpart",
        description="Train neural networks across devices by partitioning their computational "
        "graph.",
    )
    ap.add_argument("--version", action="version", version=f"graphpart {__version__}")
    ap.add_argument(
        "--debug",
        action="store_true",
        help="on a fault (an unexpected exception), show the traceback instead of one line",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ap.commands = sub.choices  # name -> the command's parser

    p = sub.add_parser("train", help="train a model (one process, or a pipeline on Ray)")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one final JSON summary line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--tensorboard",
        dest="train.tensorboard",
        action="store_const",
        const=True,
        default=None,
        help="also write TensorBoard event files to RUN_DIR/tensorboard/ (train.tensorboard; "
        "needs pip install 'graphpart[tensorboard]')",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue a run from its last checkpoint; flags and --set change how it goes on "
        "(--epochs, --lr, --stages, --schedule, ...; not the model or data)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="loss and accuracy of a trained run: on its test split or on a .npz/.csv file",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory `graphpart train` wrote")
    p.add_argument(
        "--data",
        metavar="FILE",
        default=None,
        help="a .npz (arrays X and y) or .csv (label last) to evaluate on, every row (default: "
        "the run's own test split)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="a trained run's predictions for the samples of a file")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory `graphpart train` wrote")
    p.add_argument(
        "--data",
        metavar="FILE",
        required=True,
        help="a .npz (array X) or .csv (the features, optionally a label last) of samples",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="write the predictions to a new .npz (predictions, logits) or .csv (default: one "
        "per line on stdout); an existing file is refused",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="show how the model would be partitioned (no Ray)")
    add_config_args(p, "plan")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument(
        "--auto",
        action="store_true",
        help="search stages, micro-batches, schedule, recomputation and data parallelism for "
        "--devices under --memory-budget; print the best setups (memory model + simulator, "
        "timed at rates measured here: alone, and with the devices busy at once)",
    )
    p.add_argument("--devices", type=int, default=2, help="devices for --auto (default: 2)")
    p.add_argument(
        "--top", type=int, default=10, help="--auto: how many setups to print (default: 10)"
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("graph", help="draw the computational graph (DOT, or SVG/PNG via Graphviz)")
    add_config_args(p, "graph")
    p.add_argument(
        "--out",
        default=None,
        help="graph.dot | graph.svg | graph.png (default: DOT on stdout); an existing file is "
        "refused unless --force",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument(
        "--hvp",
        action="store_true",
        help="the graph forward-over-reverse builds for Hessian-vector products, coloured by "
        "its four passes (a text listing on stdout; DOT/SVG/PNG with --out)",
    )
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser(
        "bench",
        help="benchmarks: one training step (vs NumPy, PyTorch, the matmul peak), the K=2 "
        "pipeline (vs torch pipelining), the public value_and_grad (vs PyTorch)",
        description="Benchmarks, each side by side with the peer a user would pick instead. "
        "`graphpart bench` alone runs `step`; `--pipeline` is `pipeline`.",
    )
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    q = kinds.add_parser(
        "step",
        help="one training step: graphpart vs hand-written NumPy vs PyTorch vs the matmul peak",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_step_arguments(q)
    q.set_defaults(func=run_step)
    q = kinds.add_parser(
        "pipeline",
        help="K=2 pipeline vs torch.distributed.pipelining and one process; hops; simulator",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_pipeline_arguments(q)
    q.set_defaults(func=run_pipeline, prog=q.prog)
    q = kinds.add_parser(
        "value-and-grad",
        help="the public gp.value_and_grad vs the reference vs PyTorch forward+backward, each "
        "in fresh processes",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_value_and_grad_arguments(q)
    q.set_defaults(func=run_value_and_grad)
    ap.bench_kinds = kinds.choices

    p = sub.add_parser(
        "compare",
        help="partition the graph, or shrink the minibatch? run every strategy on K devices "
        "side by side (memory, speed, convergence)",
    )
    add_config_args(p, "compare")
    p.add_argument("--devices", type=int, default=2, help="devices K (default: 2)")
    p.add_argument(
        "--lr-rule",
        choices=LR_RULES,
        default="linear",
        help="learning rate of the smaller minibatch B/K: linear (lr/K), sqrt, none "
        "(default: linear)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="test accuracy (or test loss, for mse) that time-to-target is measured at "
        "(default: 95%% of the best final accuracy)",
    )
    p.add_argument("--report", default=None, help="report folder (default: RUN_DIR/compare-<time>)")
    p.add_argument("--auto", action="store_true", help="also run plan --auto's best setup")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("profile", help="run a few steps; predicted vs measured memory per device")
    add_config_args(p, "profile")
    p.add_argument("--steps", type=int, default=3, help="training steps to run (default: 3)")
    p.add_argument(
        "--out",
        default="profile",
        help="folder for the PNGs and trace.json (default: profile; refused if an earlier "
        "profile is there, unless --force)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an earlier profile in --out (its files)"
    )
    p.add_argument("--inference", action="store_true", help="also compare with inference")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "hessian",
        help="second derivatives: the Hessian's top eigenvalues by Hessian-vector products, and "
        "the cost of one HVP against one gradient",
    )
    add_config_args(p, "hessian")
    add_hessian_arguments(p)
    p.set_defaults(func=cmd_hessian)
    return ap
