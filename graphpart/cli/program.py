"""The program: parse, run one command, and turn every failure into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from graphpart.cli.parser import bench_argv, build_parser
from graphpart.errors import Diverged, GraphpartError
from graphpart.run import sigterm


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
        code = 143 if sigterm.terminated(e) else 130
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
    crashed the process (SIGSEGV, 3 in 20 tries on the since-removed compiled transport) after
    "interrupted" was printed."""
    global _exit_at_once
    _exit_at_once = True
    sigterm.install()
    sys.exit(main())
