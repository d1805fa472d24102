"""The subcommands' handlers: each takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from graphpart.cli.flags import check_local_device, cli_overrides, load_cli_config
from graphpart.errors import GraphpartError
from graphpart.ir import to_dot, write_graph
from graphpart.plan.kinds import is_virtual
from graphpart.run.config import Config, load_config
from graphpart.run.predictions import check_out, save_predictions
from graphpart.run.report import plan_report
from graphpart.run.session import load
from graphpart.run.train import setup, train
from graphpart.tools.compare import run_auto, run_compare
from graphpart.tools.hessian import run_hessian
from graphpart.tools.hessian.graph import listing as hvp_listing
from graphpart.tools.hessian.graph import write as write_hvp_graph
from graphpart.tools.profile import run_profile


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


def _one_stage_a_device(cfg: Config, command: str) -> None:
    """Refuse a schedule of virtual stages in a command that does not model them yet."""
    if is_virtual(cfg.pipeline.schedule):
        raise GraphpartError(
            f"graphpart {command} does not run schedule {cfg.pipeline.schedule!r} (virtual "
            "stages) yet; `graphpart plan` and `graphpart train` do, or use gpipe, 1f1b, "
            "zb-h1 or zb-h2 here"
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
    cfg = load_cli_config(args)
    _one_stage_a_device(cfg, "hessian")
    return run_hessian(cfg, args)
