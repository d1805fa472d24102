"""Running the benchmark: every case's contenders timed in rotated blocks, then summarised."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from graphpart.tools.bench.contenders import (
    CONTENDERS,
    OPTIMIZER_KW,
    SIZES,
    NumpyMLP,
    init_mlp_params,
    make_graphpart,
    make_torch_step,
)
from graphpart.tools.bench.cost import matmul_gflops, step_flops, step_matmul_times
from graphpart.tools.bench.startup import measure_startup
from graphpart.tools.machine import (
    ForeignLoad,
    blas_info,
    cores,
    environment,
    loadavg,
    run_delay_s,
    thread_limits,
)

CLEAN = 0.05  # a step is "clean" when it waited for a CPU less than 5% of its time


def _summary(times: list[float], delays: list[float | None], batch: int) -> dict[str, Any]:
    med = statistics.median(times)
    clean = [t for t, d in zip(times, delays, strict=True) if d is not None and d < CLEAN * t]
    return {
        "median_ms": 1e3 * med,
        "best_ms": 1e3 * min(times),
        "mean_ms": 1e3 * statistics.fmean(times),
        "samples_per_s": batch / med,
        "clean_steps": len(clean),
        "clean_median_ms": 1e3 * statistics.median(clean) if len(clean) >= 3 else None,
        "times_ms": [1e3 * t for t in times],
        "run_delay_ms": [None if d is None else 1e3 * d for d in delays],
    }


def _paired_ratio(a: list[float], ra: list[int], b: list[float], rb: list[int]) -> float:
    """Median over rounds of (a's median in the round / b's): blocks run within a second of
    each other, so a machine that drifts slower or faster over the run cancels out."""
    ratios = []
    for r in sorted(set(ra) & set(rb)):
        ta = [t for t, k in zip(a, ra, strict=True) if k == r]
        tb = [t for t, k in zip(b, rb, strict=True) if k == r]
        ratios.append(statistics.median(ta) / statistics.median(tb))
    return statistics.median(ratios)


def _run_case(
    sizes: Sequence[int],
    batch: int,
    dtype: str,
    activation: str,
    bias: bool,
    optimizer: str,
    repeats: int,
    warmup: int,
    use_torch: bool,
    seed: int,
    rounds: int,
    pause: float,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    params = init_mlp_params(sizes, activation, bias, dtype, seed)

    t = time.perf_counter()
    eng = make_graphpart(params, sizes, batch, activation, bias, optimizer)
    build = time.perf_counter() - t  # includes the workers' kernel warm-up (compile or load)
    worker = eng.transport.workers[0]
    ref = NumpyMLP(params, activation, bias, optimizer)
    made = make_torch_step(params, sizes, activation, bias, optimizer, x, y) if use_torch else None
    tstep = made[0] if made else None

    phases: dict[str, dict[str, list[float]]] = {"graphpart": {}, "numpy": {}}

    def run_graphpart(record: bool) -> None:
        b0 = replace(worker.busy)
        eng.step(x, y)
        if record:
            for key, name in (
                ("forward", "forward"),
                ("backward", "backward"),
                ("finish", "update"),
            ):
                spent = getattr(worker.busy, key) - getattr(b0, key)
                phases["graphpart"].setdefault(name, []).append(spent)

    def run_numpy(record: bool) -> None:
        ph: dict[str, float] = {}
        ref.step(x, y, ph)
        if record:
            for name, v in ph.items():
                phases["numpy"].setdefault(name, []).append(v)

    runners: dict[str, Callable[[bool], None]] = {"graphpart": run_graphpart, "numpy": run_numpy}
    if tstep is not None:
        runners["torch"] = lambda record: tstep()

    load = ForeignLoad().start()
    t = time.perf_counter()
    run_graphpart(False)  # the first step: whatever the build left to compile or fault in
    first_step = time.perf_counter() - t
    for run in runners.values():
        time.sleep(pause)
        for _ in range(warmup):
            run(False)

    times: dict[str, list[float]] = {k: [] for k in runners}
    delays: dict[str, list[float | None]] = {k: [] for k in runners}
    round_of: dict[str, list[int]] = {k: [] for k in runners}
    names = list(runners)

    def timed(name: str) -> None:
        d0 = run_delay_s()
        t = time.perf_counter()
        runners[name](True)
        times[name].append(time.perf_counter() - t)
        d1 = run_delay_s()
        delays[name].append(None if d0 is None or d1 is None else max(0.0, d1 - d0))

    # Blocks of back-to-back steps, never one step of each in turn: a thread pool left
    # spinning by one contender (OpenBLAS, torch's OpenMP) would steal the cores of the next.
    # Several rounds, order rotated, so that load from elsewhere hits every contender alike;
    # a pause lets the previous pools go to sleep, and one untimed step starts each block.
    rounds = max(1, min(rounds, repeats))
    for r in range(rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            time.sleep(pause)
            runners[name](False)
            for _ in range(repeats // rounds + (r < repeats % rounds)):
                timed(name)
                round_of[name].append(r)

    out: dict[str, Any] = {
        "optimizer": optimizer,
        "bias": bias,
        "graphpart_build_s": build,
        "graphpart_first_step_s": first_step,
        "foreign_load": load.stop(),
    }
    for name in CONTENDERS:
        out[name] = _summary(times[name], delays[name], batch) if name in times else None
    for name, ph in phases.items():  # "other": step time outside the phases, step by step
        ph["other"] = [t - sum(parts) for t, *parts in zip(times[name], *ph.values(), strict=True)]
        out[name]["phases_median_ms"] = {k: 1e3 * statistics.median(v) for k, v in ph.items()}
    gp = out["graphpart"]
    for name in ("numpy", "torch"):
        r = out[name]
        out[f"ratio_{name}"] = None if r is None else gp["median_ms"] / r["median_ms"]
        out[f"ratio_{name}_best"] = None if r is None else gp["best_ms"] / r["best_ms"]
        both = r is not None and None not in (gp["clean_median_ms"], r["clean_median_ms"])
        out[f"ratio_{name}_clean"] = gp["clean_median_ms"] / r["clean_median_ms"] if both else None
        out[f"ratio_{name}_paired"] = (
            None
            if r is None
            else _paired_ratio(
                times["graphpart"], round_of["graphpart"], times[name], round_of[name]
            )
        )
    return out


def run_step_benchmark(
    sizes: Sequence[int] = SIZES,
    batch: int = 256,
    dtype: str = "float32",
    activation: str = "relu",
    repeats: int = 30,
    warmup: int = 5,
    *,
    optimizers: Sequence[str] = ("adam", "sgd"),
    biases: Sequence[bool] = (True, False),
    threads: int | None = None,
    torch: bool | None = None,
    matmul_n: int = 2048,
    matmul_repeats: int = 5,
    seed: int = 0,
    rounds: int = 10,
    pause: float = 0.15,
    startup: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time one training step of an MLP in graphpart, hand-written NumPy and (if importable)
    PyTorch, side by side, with every thread pool at `threads` (default: the usable cores).

    Every case (optimizer x bias) times `repeats` steps per contender after `warmup` steps
    each, in `rounds` blocks of back-to-back steps per contender (order rotated, `pause`
    seconds and one untimed step before each block), so that neither a thread pool left
    spinning by another contender nor load from elsewhere favours one of them.
    `torch=None` includes PyTorch when it is importable. The result holds the environment,
    the matmul peak and FLOP floor, per case and contender median/best step times, samples/s,
    phase medians, the ratios graphpart/numpy and graphpart/torch and graphpart's fraction
    of the matmul peak; "headline" is the first case (Adam with bias by default).
    """
    sizes = [int(s) for s in sizes]
    for name in optimizers:
        if name not in OPTIMIZER_KW:
            raise ValueError(f"optimizer {name!r}; valid: {', '.join(OPTIMIZER_KW)}")
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError("need repeats >= 1, warmup >= 0 and batch >= 1")
    if torch is None:
        try:
            import torch as _torch  # noqa: F401

            torch = True
        except ImportError:
            torch = False
    n = threads or cores()
    env = environment()
    flops = step_flops(sizes, batch)
    load = ForeignLoad().start()
    with thread_limits(n, torch):
        env["blas"] = blas_info()  # as limited for the run
        say = progress or (lambda m: None)
        say(f"bench: the {matmul_n}x{matmul_n} matmul peak and the step's matmuls ...")
        peak = matmul_gflops(matmul_n, dtype, matmul_repeats)
        mm = step_matmul_times(sizes, batch, dtype, repeats)
        cases = []
        todo = [(o, b) for o in optimizers for b in biases]
        for i, (o, b) in enumerate(todo):
            say(
                f"bench: case {i + 1}/{len(todo)}: {o}, {'bias' if b else 'no bias'}: "
                f"{rounds} rounds of {repeats} steps per contender ..."
            )
            cases.append(
                _run_case(
                    sizes,
                    batch,
                    dtype,
                    activation,
                    b,
                    o,
                    repeats,
                    warmup,
                    torch,
                    seed,
                    rounds,
                    pause,
                )  # fmt: skip
            )
        after = matmul_gflops(matmul_n, dtype, matmul_repeats)  # the machine's speed drifts:
        if after["gflops"] > peak["gflops"]:  # the peak is the better of before and after
            peak = after
    floor_ms = 1e3 * flops / (peak["gflops"] * 1e9)
    for c in cases:
        c["peak_fraction"] = floor_ms / c["graphpart"]["median_ms"]
        c["peak_fraction_best"] = floor_ms / c["graphpart"]["best_ms"]
        c["graphpart"]["gflops"] = flops / (c["graphpart"]["median_ms"] * 1e6)
    env["loadavg_after"] = loadavg()
    env["foreign_load"] = load.stop()
    return {
        "config": {
            "sizes": sizes,
            "batch": batch,
            "dtype": dtype,
            "activation": activation,
            "loss": "cross_entropy",
            "repeats": repeats,
            "warmup": warmup,
            "threads": n,
            "rounds": rounds,
            "pause_s": pause,
            "optimizers": OPTIMIZER_KW,
        },
        "env": env,
        "flops_per_step": flops,
        "matmul": {**peak, "dtype": dtype, "floor_ms": floor_ms},
        "step_matmuls": mm,
        "cases": cases,
        "headline": cases[0],
        "startup": _startup(sizes, batch, dtype, activation, say) if startup else None,
    }


def _startup(
    sizes: Sequence[int], batch: int, dtype: str, activation: str, say: Callable[[str], None]
) -> dict[str, Any]:
    say("bench: the first step in fresh processes (compile vs cache) ...")
    return measure_startup(sizes, batch, dtype, activation)
