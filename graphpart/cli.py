"""The `graphpart` command line: train, evaluate, predict, plan, graph, compare, bench, profile,
hessian."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from graphpart import __version__
from graphpart.engines import check_device
from graphpart.errors import Diverged, GraphpartError, Terminated
from graphpart.ir import to_dot, write_graph
from graphpart.run import sigterm
from graphpart.run.config import Config, load_config
from graphpart.run.predictions import check_out, save_predictions
from graphpart.run.report import plan_report
from graphpart.run.session import DEFAULT_CONFIG, load, make_config
from graphpart.run.train import setup, train
from graphpart.tools.bench.cli import add_step_arguments, run_step
from graphpart.tools.bench.value_and_grad import add_value_and_grad_arguments, run_value_and_grad
from graphpart.tools.bench_pipeline.cli import add_pipeline_arguments, run_pipeline
from graphpart.tools.compare import LR_RULES, run_auto, run_compare
from graphpart.tools.hessian import add_hessian_arguments, run_hessian
from graphpart.tools.hessian.graph import listing as hvp_listing
from graphpart.tools.hessian.graph import write as write_hvp_graph
from graphpart.tools.profile import run_profile


class UsageError(GraphpartError):
    """A command line argparse refused: printed as one line like any bad input (exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, `graphpart: error: MESSAGE (see PROG --help)`,
    instead of the whole usage; subcommands' parsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


# flag -> (dotted config key, type, help)
FLAGS: dict[str, tuple[str, Any, str]] = {
    "--data": (
        "data.source",
        str,
        "digits | synthetic | path/to/data.npz (arrays X and y) | path/to/data.csv (label last)",
    ),
    "--n-samples": ("data.n_samples", int, "synthetic data: number of samples"),
    "--n-features": ("data.n_features", int, "synthetic data: input features"),
    "--n-classes": (
        "data.n_classes",
        int,
        "classes (synthetic data: default 10; a .npz/.csv file: from its labels unless given)",
    ),
    "--hidden": ("model.hidden", str, "hidden layer sizes, e.g. 256,256"),
    "--activation": ("model.activation", str, "identity | relu | sigmoid | tanh"),
    "--loss": ("model.loss", str, "cross_entropy | mse"),
    "--weight-decay": ("model.weight_decay", float, "lambda of the l2 regulariser s"),
    "--bias": ("model.bias", str, "true | false"),
    "--epochs": ("train.epochs", int, "epochs"),
    "--batch-size": ("train.batch_size", int, "minibatch size (split into micro-batches)"),
    "--optimizer": ("train.optimizer", str, "sgd | adam"),
    "--lr": ("train.lr", float, "learning rate"),
    "--momentum": ("train.momentum", float, "SGD momentum"),
    "--seed": ("train.seed", int, "seed for initialisation, shuffling and the data split"),
    "--dtype": ("train.dtype", str, "float32 | float64"),
    "--log-every": ("train.log_every", int, "also log every N steps to metrics.jsonl"),
    "--stages": ("pipeline.stages", int, "pipeline stages (devices)"),
    "--microbatches": (
        "pipeline.microbatches",
        int,
        "micro-batches per minibatch (with one stage: gradient accumulation over them)",
    ),
    "--schedule": ("pipeline.schedule", str, "gpipe | 1f1b"),
    "--strategy": ("pipeline.strategy", str, "uniform | balanced | memory"),
    "--address": (
        "pipeline.address",
        str,
        "join a Ray cluster: auto (the one this machine's Ray records name) | host:port | "
        "ray://host:port (default: none: a local Ray started for the run)",
    ),
    "--device": ("pipeline.device", str, "cpu | cuda"),
    "--transport": (
        "pipeline.transport",
        str,
        "auto | inprocess | shm | push | tasks | compiled: what carries the stages' calls and "
        "tensors",
    ),
    "--cost": ("pipeline.cost", str, "flops | measured: what the balanced strategy balances"),
    "--data-parallel": (
        "pipeline.data_parallel",
        int,
        "K replicas of the whole model on Ray actors, gradients all-reduced every step",
    ),
    "--memory-budget": (
        "pipeline.memory_budget",
        str,
        "per-device memory budget, e.g. 64MiB, for what the memory model predicts a worker "
        "allocates (tensors, optimizer state, channel buffers); a worker process's own baseline "
        "(Python, NumPy, Numba, Ray: about 210 MiB, shown by graphpart profile) is not counted. "
        "A plan that does not fit is refused",
    ),
    "--recompute": ("pipeline.recompute", str, "true | false: recompute activations in backward"),
    "--max-failures": (
        "train.max_failures",
        int,
        "restart dead or stalled stages from the last checkpoint up to N times",
    ),
    "--step-timeout": (
        "pipeline.step_timeout",
        float,
        "seconds a step may take before a stage is called stalled (0: from measured steps)",
    ),
    "--run-dir": ("run.dir", str, "folder for run directories"),
    "--name": ("run.name", str, "run directory name (default: a timestamp)"),
}


# which config keys each command's flags set (a prefix "data." is the whole section); the
# others would not change what the command does. --set takes any key everywhere.
_MODEL = ("data.", "model.")
COMMAND_KEYS: dict[str, tuple[str, ...]] = {
    "plan": _MODEL
    + ("train.batch_size", "train.optimizer", "train.dtype")
    + tuple(
        f"pipeline.{k}"
        for k in (
            "stages microbatches schedule strategy cost recompute memory_budget data_parallel "
            "device"
        ).split()
    ),
    "graph": (*_MODEL, "pipeline.stages", "pipeline.strategy", "pipeline.cost"),
    "profile": _MODEL
    + ("train.batch_size", "train.optimizer", "train.seed", "train.dtype")
    + tuple(
        f"pipeline.{k}"
        for k in (
            "stages microbatches schedule strategy cost recompute memory_budget device "
            "transport address data_parallel"
        ).split()
    ),
    "compare": _MODEL  # not pipeline.schedule: compare runs both schedules
    + ("train.", "run.dir")
    + tuple(
        f"pipeline.{k}"
        for k in (
            "microbatches strategy cost recompute memory_budget device transport "
            "address step_timeout"
        ).split()
    ),
    "hessian": (
        *_MODEL,
        "train.batch_size",
        "train.seed",
        "train.dtype",
        "pipeline.stages",
        "pipeline.microbatches",
        "pipeline.schedule",
        "pipeline.strategy",
    ),
}


# a command's own default for a key, where it is not the config's (shown in --help)
COMMAND_DEFAULTS: dict[str, dict[str, str]] = {
    "compare": {"pipeline.microbatches": "2 x --devices, at most the batch size"},
}


def _default(key: str) -> Any:
    """The embedded config's value of a dotted key, as a user would type it."""
    section, name = key.split(".")
    v = getattr(getattr(Config(), section), name)
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, bool):
        return str(v).lower()
    return v


def _add_config_args(p: argparse.ArgumentParser, command: str | None = None) -> None:
    """The config file argument, --set, and the flags of the keys `command` uses (every key
    for train), each with the embedded config's default."""
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help=f"TOML config (default: the embedded {DEFAULT_CONFIG}, as in examples/)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set train.lr=0.01",
    )
    only = COMMAND_KEYS.get(command or "")
    for flag, (key, typ, helptext) in FLAGS.items():
        if only is None or any(key == k or (k.endswith(".") and key.startswith(k)) for k in only):
            d = COMMAND_DEFAULTS.get(command or "", {}).get(key, _default(key))
            shown = (
                ""
                if "default" in helptext
                else f" (default: {d})"
                if d not in ("", None)
                else " (default: none)"
            )
            p.add_argument(
                flag,
                dest=key,
                type=typ,
                default=None,
                metavar=flag.lstrip("-").replace("-", "_").upper(),
                help=(helptext + shown).replace("%", "%%"),
            )


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command line sets: --set items, then the flags."""
    overrides: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise GraphpartError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=0.01")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    for key, _, _ in FLAGS.values():
        v = getattr(args, key, None)
        if v is not None:
            overrides[key] = v
    if getattr(args, "train.tensorboard", None):
        overrides["train.tensorboard"] = True
    return overrides


def load_cli_config(args: argparse.Namespace) -> Config:
    return make_config(args.config, cli_overrides(args))


def check_local_device(cfg: Config) -> None:
    """A device this machine lacks is refused before anything is written (a run directory).
    With --address the workers may run elsewhere; each checks its own device as it starts."""
    if not cfg.pipeline.address:
        check_device(cfg.pipeline.device)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        cfg_path = Path(args.resume) / "config.toml"
        if not cfg_path.is_file():
            raise GraphpartError(
                f"--resume {args.resume}: no config.toml there; give a run "
                "directory written by `graphpart train`"
            )
        if args.config is not None:
            raise GraphpartError(
                f"--resume {args.resume} with config {args.config}: a resumed run keeps its own "
                "config.toml; change keys with flags or --set instead"
            )
        cfg = load_config(str(cfg_path), cli_overrides(args))  # recorded in config.toml
    else:
        cfg = load_cli_config(args)
    check_local_device(cfg)
    quiet = args.json or args.no_progress or not sys.stderr.isatty()
    summary = train(cfg, progress=not quiet, resume=args.resume)
    if args.json:
        print(json.dumps(summary))
    else:
        acc, loss = summary["test_accuracy"], summary["final_loss"]
        print(
            f"done: {summary['steps']} steps"
            + (f", final loss {loss:.4f}" if loss is not None else "")
            + (f", test accuracy {acc:.4f}" if acc is not None else "")
            + f"\ntime: {summary['wall_s']:.1f} s in all; training steps "
            f"{summary['train_s']:.2f} s: {summary['samples_per_s'] or 0:,.0f} samples/s in "
            f"steady state (the median step), {summary['samples_per_s_mean'] or 0:,.0f} over "
            f"all steps; the first {summary['first_steps']} step(s) "
            f"{summary['first_steps_s']:.2f} s; start-up "
            f"{summary['startup_s']:.1f} s (workers, kernel compile or cache load)"
            + f"\nrun directory: {summary['run_dir']}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = load(args.run_dir)
    m = run.evaluate(args.data)
    if args.json:
        print(json.dumps({"run_dir": str(run.path), "data": args.data, **m}))
        return 0
    acc = f"accuracy {m['accuracy']:.4f}, " if "accuracy" in m else ""
    where = args.data if args.data else "the run's test split"
    print(f"{acc}loss {m['loss']:.4f} on {m['samples']} samples ({where})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    out = check_out(args.out) if args.out else None  # refused before any work
    run = load(args.run_dir)
    outputs = run.predict(args.data)
    classes = run.task == "classification"
    predictions = outputs.argmax(axis=1) if classes else outputs
    head = {"run_dir": str(run.path), "data": args.data, "samples": len(predictions)}
    if out is not None:
        save_predictions(out, predictions, outputs if classes else None)
        if args.json:
            print(json.dumps({**head, "out": str(out)}))
        else:
            print(f"wrote {len(predictions)} predictions to {out}", file=sys.stderr)
    elif args.json:
        print(json.dumps({**head, "predictions": predictions.tolist()}))
    else:
        rows = predictions.tolist()
        lines = [",".join(map(str, r)) if isinstance(r, list) else str(r) for r in rows]
        try:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
        except BrokenPipeError:  # `graphpart predict ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    if args.auto:
        return run_auto(
            cfg, devices=args.devices, as_json=args.json, limit=args.top, config_path=args.config
        )
    s = setup(cfg)
    for note in s.notes:
        print(f"graphpart: {note}", file=sys.stderr)
    rep = plan_report(s, s.config)
    print(json.dumps(rep["data"]) if args.json else rep["text"])
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    s = setup(cfg)
    if args.hvp:  # the forward-over-reverse graph: a listing, or a drawing coloured by pass
        if args.out is None or args.out == "-":
            print(hvp_listing(s.graph))
        else:
            print(
                f"wrote {write_hvp_graph(s.graph, args.out, overwrite=args.force)}", file=sys.stderr
            )
        return 0
    stage_of = s.plan.stage_of() if cfg.pipeline.stages > 1 else None
    if args.out is None or args.out == "-":
        print(to_dot(s.graph, stage_of), end="")
    else:
        out = write_graph(s.graph, args.out, stage_of, overwrite=args.force)
        print(f"wrote {out}", file=sys.stderr)
    return 0


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


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    check_local_device(cfg)
    return run_compare(
        cfg,
        devices=args.devices,
        microbatches=cfg.pipeline.microbatches if cfg.pipeline.microbatches > 1 else None,
        lr_rule=args.lr_rule,
        target=args.target,
        report=args.report,
        auto=args.auto,
        as_json=args.json,
    )


def cmd_profile(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    check_local_device(cfg)
    return run_profile(
        cfg,
        steps=args.steps,
        out=args.out,
        inference=args.inference,
        as_json=args.json,
        force=args.force,
    )


def cmd_hessian(args: argparse.Namespace) -> int:
    return run_hessian(load_cli_config(args), args)


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
    _add_config_args(p)
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
    _add_config_args(p, "plan")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument(
        "--auto",
        action="store_true",
        help="search stages, micro-batches, schedule, recomputation and data parallelism for "
        "--devices under --memory-budget; print the best setups (memory model + simulator)",
    )
    p.add_argument("--devices", type=int, default=2, help="devices for --auto (default: 2)")
    p.add_argument(
        "--top", type=int, default=10, help="--auto: how many setups to print (default: 10)"
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("graph", help="draw the computational graph (DOT, or SVG/PNG via Graphviz)")
    _add_config_args(p, "graph")
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
    _add_config_args(p, "compare")
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
    _add_config_args(p, "profile")
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
    _add_config_args(p, "hessian")
    add_hessian_arguments(p)
    p.set_defaults(func=cmd_hessian)
    return ap


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines())


def _parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; arguments no parser took are refused by the command's own parser, so that the
    message points at its --help."""
    argv = bench_argv(list(sys.argv[1:] if argv is None else argv), ap.bench_kinds)
    args, extra = ap.parse_known_args(argv)
    if extra:
        command = getattr(ap, "commands", {}).get(args.command, ap)
        if args.command == "bench":
            command = ap.bench_kinds.get(args.bench, command)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure ends with one line on stderr, `graphpart: error: ...`:
    exit 2 for bad input (a GraphpartError, argparse's refusals included), 1 for a fault (any
    other exception; `--debug` shows its traceback instead), 130 on Ctrl-C."""
    ap = build_parser()
    args = None
    try:
        args = _parse(ap, argv)
        return int(args.func(args) or 0)
    except SystemExit as e:  # --help, and argparse's own exits
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except GraphpartError as e:
        if args is not None and args.debug:
            traceback.print_exc()
        print(f"graphpart: error: {_one_line(str(e))}", file=sys.stderr)
        return 1 if isinstance(e, Diverged) else 2  # divergence: the run's fault, not input
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): the run says what it kept
        code = 143 if isinstance(e, Terminated) else 130
        print("graphpart: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        if _exit_at_once:  # the program (not a caller of main): see entry()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except BrokenPipeError:  # `graphpart ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if args is not None and args.debug:
            raise
        lines = str(e).strip().splitlines()
        what = f"{type(e).__name__}: {lines[0].strip()}" if lines else type(e).__name__
        print(
            f"graphpart: error: {what} (a fault; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


_exit_at_once = False


def entry() -> None:
    """The `graphpart` program: `main`, then exit with its code. After Ctrl-C the process
    ends at once, inside main's handler (the run closed and its state written): Ray's objects
    still held by the interrupted frames, freed when the handler ends, after ray.shutdown,
    crashed the process (SIGSEGV, 3 in 20 tries on the compiled transport) after
    "interrupted" was printed."""
    global _exit_at_once
    _exit_at_once = True
    sigterm.install()
    sys.exit(main())


if __name__ == "__main__":
    entry()
