"""Training-step benchmark: graphpart's engine vs hand-written NumPy (and PyTorch) vs BLAS peak."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from graphpart.errors import ConfigError, GraphpartError
from graphpart.tools.bench.contenders import OPTIMIZER_KW, SIZES
from graphpart.tools.bench.report import format_report
from graphpart.tools.bench.step import run_step_benchmark


class OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals are one-line ConfigErrors naming the option and what is valid
    (`graphpart bench` prints them as `graphpart: error: ...`, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= lo."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= {lo}")
        return v

    return parse


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number >= 0")
    return v


def int_list(min_len: int, what: str) -> Callable[[str], list[int]]:
    """An argparse type: a comma list of at least `min_len` positive integers."""

    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) < min_len or any(v < 1 for v in values):
            count = f"at least {min_len} " if min_len > 1 else ""
            raise argparse.ArgumentTypeError(
                f"{text!r}: must be {what}, a comma list of {count}positive integers"
            )
        return values

    return parse


def name_list(valid: Iterable[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a non-empty comma list of names from `valid`."""
    valid = tuple(valid)

    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [n for n in names if n not in valid]
        if bad or not names:
            shown = repr(bad[0]) if bad else repr(text)
            raise argparse.ArgumentTypeError(
                f"{shown} is not {what}; valid: a comma list of {', '.join(valid)}"
            )
        return names

    return parse


def run_main(
    ap: argparse.ArgumentParser, argv: Sequence[str] | None, body: Callable[[Any], int]
) -> int:
    """Parse (a leading "--" is dropped: `graphpart bench -- ...`) and run. Called with argv,
    refusals raise ConfigError for the caller; as a script (argv None), print them as one
    line, `PROG: error: ...`, and return 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return body(ap.parse_args(args[1:] if args[:1] == ["--"] else args))
    except GraphpartError as e:
        if argv is not None:
            raise
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2


def add_model_arguments(
    ap: argparse.ArgumentParser,
    sizes: Sequence[int],
    min_widths: int = 2,
    what: str = "layer widths d,h1,..,q",
) -> None:
    """The options every benchmark shares: the MLP's widths, the minibatch and the dtype."""
    ap.add_argument(
        "--sizes", type=int_list(min_widths, what), default=",".join(map(str, sizes)), help=what
    )
    ap.add_argument("--batch", type=int_at_least(1), default=256, help="minibatch rows")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))


def add_step_arguments(ap: argparse.ArgumentParser) -> None:
    """The step benchmark's options (`graphpart bench step`, `python -m graphpart.tools.bench`)."""
    add_model_arguments(ap, SIZES)
    ap.add_argument("--activation", default="relu", choices=("relu", "sigmoid", "tanh", "identity"))
    ap.add_argument("--repeats", type=int_at_least(1), default=30, help="timed steps per block")
    ap.add_argument("--warmup", type=int_at_least(0), default=5, help="untimed steps first")
    ap.add_argument(
        "--optimizers",
        type=name_list(OPTIMIZER_KW, "an optimizer"),
        default="adam,sgd",
        help="comma list of " + ", ".join(OPTIMIZER_KW),
    )
    ap.add_argument("--bias", default="both", choices=("both", "yes", "no"), help="bias terms")
    ap.add_argument(
        "--threads", type=int_at_least(1), default=None, help="BLAS threads (default: the cores)"
    )
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument(
        "--matmul-n", type=int_at_least(1), default=2048, help="n of the n x n matmul peak"
    )
    ap.add_argument(
        "--rounds",
        type=int_at_least(1),
        default=10,
        help="blocks of back-to-back steps per contender (order rotated)",
    )
    ap.add_argument(
        "--pause",
        type=non_negative,
        default=0.15,
        help="seconds of rest before each block (lets thread pools go idle)",
    )
    ap.add_argument(
        "--startup",
        action="store_true",
        help="also time the first step in fresh processes (compile vs cache)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")


def run_step(a: argparse.Namespace) -> int:
    """Run the step benchmark with parsed options; print the report (or JSON)."""
    res = run_step_benchmark(
        a.sizes,
        a.batch,
        a.dtype,
        a.activation,
        a.repeats,
        a.warmup,
        optimizers=a.optimizers,
        biases={"both": (True, False), "yes": (True,), "no": (False,)}[a.bias],
        threads=a.threads,
        torch=False if a.no_torch else None,
        matmul_n=a.matmul_n,
        rounds=a.rounds,
        pause=a.pause,
        startup=a.startup,
        progress=_say,
    )
    print(json.dumps(res, indent=1) if a.json else format_report(res))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m graphpart.tools.bench") -> int:
    """`python -m graphpart.tools.bench`: run, print the report or JSON."""
    ap = OneLineParser(
        prog=prog, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_step_arguments(ap)
    return run_main(ap, argv, run_step)


def _say(message: str) -> None:
    """Progress on stderr (stdout keeps the report or the JSON)."""
    print(message, file=sys.stderr, flush=True)
