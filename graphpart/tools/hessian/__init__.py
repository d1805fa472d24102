"""`graphpart hessian`: the Hessian spectrum by HVPs, and one HVP's cost against a gradient."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from graphpart.autodiff import value_and_grad
from graphpart.errors import GraphpartError
from graphpart.hvp import flatten, hvp, unflatten, value_grad_hvp
from graphpart.params import init_params
from graphpart.plan.hvp import pipelined_hvp
from graphpart.run.config import Config
from graphpart.run.train import setup
from graphpart.tools.hessian import graph as hgraph
from graphpart.tools.hessian.cost import Cost, measure
from graphpart.tools.hessian.report import text_report
from graphpart.tools.hessian.spectrum import lanczos, power_iteration

DEFAULT_HIDDEN = (16,)  # digits 64-16-10: 1,210 parameters, a dense Hessian in about a second


def add_hessian_arguments(p: argparse.ArgumentParser) -> None:
    """The command's own flags (besides the config arguments cli.py adds)."""
    p.add_argument("--top", type=int, default=5, help="eigenvalues to show (default: 5)")
    p.add_argument("--iters", type=int, default=40, help="Lanczos steps (HVPs; default 40)")
    p.add_argument(
        "--power", type=int, default=3, help="eigenvalues by power iteration (default: 3)"
    )
    p.add_argument(
        "--power-iters", type=int, default=300, help="power iteration: most HVPs per eigenvalue"
    )
    p.add_argument(
        "--samples", type=int, default=0, help="training rows in the batch (default: 0, all)"
    )
    p.add_argument(
        "--dense-max",
        type=int,
        default=2500,
        help="compute the dense Hessian (one HVP per parameter) up to this many parameters",
    )
    p.add_argument("--repeats", type=int, default=20, help="timing: repetitions (median)")
    p.add_argument(
        "--graph",
        metavar="FILE",
        default=None,
        help="instead: the graph forward-over-reverse builds, as text (-) or .dot/.svg/.png",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --graph file")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def _set_on_command_line(args: argparse.Namespace, key: str) -> bool:
    return getattr(args, key, None) is not None or any(
        s.split("=", 1)[0].strip() == key for s in getattr(args, "set", [])
    )


def hessian_config(cfg: Config, args: argparse.Namespace) -> Config:
    """The command's defaults on top of the loaded config: float64 unless --dtype says
    otherwise; without a config file or --hidden, the small digits model 64-16-10."""
    train, model = cfg.train, cfg.model
    if not _set_on_command_line(args, "train.dtype"):
        train = dataclasses.replace(train, dtype="float64")
    if getattr(args, "config", None) is None and not _set_on_command_line(args, "model.hidden"):
        model = dataclasses.replace(model, hidden=DEFAULT_HIDDEN)
    return dataclasses.replace(cfg, train=train, model=model)


def _check_args(args: argparse.Namespace) -> None:
    for name, low in (
        ("top", 1),
        ("iters", 1),
        ("power", 0),
        ("power_iters", 1),
        ("samples", 0),
        ("dense_max", 0),
        ("repeats", 1),
    ):
        value = getattr(args, name)
        if value < low:
            flag = "--" + name.replace("_", "-")
            raise GraphpartError(f"{flag} {value}: use a whole number >= {low}")


def run_hessian(cfg: Config, args: argparse.Namespace) -> int:
    _check_args(args)
    cfg = hessian_config(cfg, args)
    s = setup(cfg)
    graph = s.graph
    if args.graph is not None:
        if args.graph == "-":
            print(hgraph.listing(graph))
        else:
            out = hgraph.write(graph, args.graph, overwrite=args.force)
            print(f"wrote {out}", file=sys.stderr)
        return 0
    with threadpool_limits(1):  # one BLAS thread: the arithmetic's cost, not thread contention
        figures = hessian_figures(s, args)
    if args.json:
        print(json.dumps(figures))
    else:
        print(text_report(figures))
    return 0


def hessian_figures(s: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure the command prints, as plain data."""
    cfg, graph, ds = s.config, s.graph, s.dataset
    rows = len(ds.X_train) if args.samples == 0 else min(args.samples, len(ds.X_train))
    batch = {"x": ds.X_train[:rows], "y": ds.y_train[:rows]}
    params = init_params(graph, seed=cfg.train.seed, dtype=cfg.train.dtype)
    dtype = next(iter(params.values())).dtype
    n = int(sum(np.prod(p.shape) for p in graph.params))
    rng = np.random.default_rng(cfg.train.seed)

    def matvec(u: np.ndarray) -> np.ndarray:
        return flatten(graph, hvp(graph, params, batch, unflatten(graph, u.astype(dtype))))

    u, w = rng.standard_normal(n), rng.standard_normal(n)
    w /= np.linalg.norm(w)  # a unit direction: eps is then the step's length
    Hu, Hw = matvec(u), matvec(w)
    symmetry = abs(u @ Hw - w @ Hu) / abs(u @ Hw)
    eps = 1e-5
    vt = unflatten(graph, w)
    plus = value_and_grad(graph, {k: p + eps * vt[k] for k, p in params.items()}, batch)[1]
    minus = value_and_grad(graph, {k: p - eps * vt[k] for k, p in params.items()}, batch)[1]
    fd = (flatten(graph, plus) - flatten(graph, minus)) / (2 * eps)
    fd_err = float(np.linalg.norm(fd - Hw) / np.linalg.norm(Hw))
    say = _say
    say(f"hessian: {n} parameters, {rows} samples, {dtype}: symmetry and finite differences done")
    checks: dict[str, Any] = {
        "symmetry": float(symmetry),
        "finite_differences": fd_err,
        "fd_eps": eps,
    }
    p = cfg.pipeline
    if p.stages > 1 or p.microbatches > 1:
        J1, _, hv1 = value_grad_hvp(graph, params, batch, vt)
        _, _, hv2 = pipelined_hvp(s.plan, params, batch, vt, p.microbatches, p.schedule)
        a, b = flatten(graph, hv1), flatten(graph, hv2)
        checks["pipelined"] = {
            "stages": p.stages,
            "microbatches": p.microbatches,
            "schedule": p.schedule,
            "max_rel_diff": float(np.abs(a - b).max() / np.abs(a).max()),
        }
    dense = None
    if n <= args.dense_max:
        say(f"hessian: the dense Hessian, one HVP per column ({n} HVPs) ...")
        H = np.empty((n, n))
        e = np.zeros(n)
        for i in range(n):
            e[i] = 1.0
            H[:, i] = matvec(e)
            e[i] = 0.0
        ev = np.linalg.eigvalsh((H + H.T) / 2)[::-1]
        dense = {
            "top": [float(x) for x in ev[: args.top]],
            "smallest": float(ev[-1]),
            "negative": int((ev < -1e-12 * abs(ev[0])).sum()),
            "trace": float(np.trace(H)),
            "hvps": n,
        }
    say(f"hessian: Lanczos ({args.iters} HVPs) and power iteration ...")
    lz = lanczos(matvec, n, args.iters, args.top, seed=cfg.train.seed)
    pw = power_iteration(
        matvec, n, min(args.power, args.top), args.power_iters, seed=cfg.train.seed
    )
    say(f"hessian: one HVP against one gradient, {args.repeats} repeats each ...")
    cost: Cost = measure(graph, params, batch, vt, args.repeats)
    m = cfg.model
    return {
        "model": {
            "data": cfg.data.source,
            "sizes": [ds.n_features, *m.hidden, ds.n_outputs],
            "activation": m.activation,
            "bias": m.bias,
            "loss": m.loss,
            "weight_decay": m.weight_decay,
            "dtype": str(dtype),
            "parameters": n,
            "shapes": {p.name: list(p.shape) for p in graph.params},
            "samples": rows,
            "seed": cfg.train.seed,
        },
        "dense": dense,
        "lanczos": {"top": list(lz.values), "hvps": lz.products},
        "power": {"top": list(pw.values), "hvps": pw.products, "residuals": list(pw.residuals)},
        "checks": checks,
        "cost": {**dataclasses.asdict(cost), "ratio": cost.ratio},
    }


def _say(message: str) -> None:
    """Progress on stderr; stdout keeps the report (or the JSON)."""
    print(message, file=sys.stderr, flush=True)
