"""Pipeline benchmark: boundary transfers, K=2 throughput vs one process, bubble vs simulator."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SIZES = (784, 1024, 1024, 1024, 10)
TRANSFER_SHAPE = (256, 1024)  # float32: 1 MiB, one micro-batch boundary of a 1024-wide layer
TARGET_TRANSFER_MS = 1.0
TARGET_RATIO = 0.9  # measured throughput at least 90% of what the simulator predicts


# -- (a) one boundary transfer --------------------------------------------------------------------


class _Peer:
    """A stage stand-in: holds a 1 MiB boundary buffer, sends it, receives one."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.big = np.ones(shape, np.float32)
        self.small = np.ones((1, 1), np.float32)

    def noop(self) -> None:
        return None

    def send(self, i: int, tick: Any = None) -> np.ndarray:
        self.big[0, 0] = i  # written in place, as a stage writes its boundary buffer
        return self.big

    def send_small(self, i: int, tick: Any = None) -> np.ndarray:
        self.small[0, 0] = i
        return self.small

    def recv(self, a: np.ndarray, tick: Any = None) -> float:
        return float(a[0, 0])

    def relay(self, i: int, other: Any) -> float:
        """Push the boundary array to `other` as a direct actor call, as a PushStageActor does,
        and wait for its answer."""
        import ray

        self.big[0, 0] = i
        return ray.get(other.recv.remote(self.big))

    def cpu_s(self) -> float:
        return time.process_time()


def _median_ms(fn: Callable[[int], Any], n: int, warmup: int = 5) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _idle_cores(actors: list[Any], seconds: float = 1.0) -> list[float]:
    """Cores each actor's process keeps busy while the driver sleeps `seconds`."""
    import ray

    c0, t = ray.get([a.cpu_s.remote() for a in actors]), time.perf_counter()
    time.sleep(seconds)
    c1 = ray.get([a.cpu_s.remote() for a in actors])
    wall = time.perf_counter() - t
    return [(y - x) / wall for x, y in zip(c0, c1, strict=True)]


def measure_transfer(n: int = 200, shape: tuple[int, int] = TRANSFER_SHAPE) -> dict[str, Any]:
    """Medians (ms) of: an empty actor call; actor-to-actor round trips of the boundary array
    through ordinary tasks (one at a time, and pipelined: per item); the same through a
    compiled graph (driver -> a -> b -> driver), and the same graph moving a 1-float array."""
    import ray
    from ray.dag import InputNode

    peer = ray.remote(num_cpus=1)(_Peer)
    a, b = peer.remote(shape), peer.remote(shape)
    out: dict[str, Any] = {"shape": list(shape), "bytes": int(np.prod(shape)) * 4, "samples": n}
    try:
        ray.get([a.noop.remote(), b.noop.remote()])
        out["empty_call_ms"] = _median_ms(lambda i: ray.get(a.noop.remote()), n)
        out["tasks_round_trip_ms"] = _median_ms(
            lambda i: ray.get(b.recv.remote(a.send.remote(i))), n
        )
        out["tasks_round_trip_small_ms"] = _median_ms(
            lambda i: ray.get(b.recv.remote(a.send_small.remote(i))), n
        )
        per_item = []
        for _ in range(5):
            t = time.perf_counter()
            ray.get([b.recv.remote(a.send.remote(i)) for i in range(n // 5)])
            per_item.append((time.perf_counter() - t) / (n // 5))
        out["tasks_pipelined_per_item_ms"] = statistics.median(per_item) * 1e3
        out["push_round_trip_ms"] = _median_ms(lambda i: ray.get(a.relay.remote(i, b)), n)
        out["push_hop_ms"] = max(0.0, out["push_round_trip_ms"] - out["empty_call_ms"])
        for name, method in (
            ("compiled_round_trip_ms", "send"),
            ("compiled_round_trip_small_ms", "send_small"),
        ):
            with InputNode() as inp:  # b reads the input too: teardown then never hangs
                dag = b.recv.bind(getattr(a, method).bind(inp, inp), inp)
            cdag = dag.experimental_compile(
                _buffer_size_bytes=out["bytes"] + (64 << 10), _max_inflight_executions=1
            )
            try:
                out[name] = _median_ms(lambda i, c=cdag: ray.get(c.execute(i)), n, warmup=20)
                if method == "send":  # waiting actors poll their channels: what idling costs
                    out["compiled_idle_cpu_cores"] = _idle_cores([a, b])
            finally:
                cdag.teardown()
        out["compiled_marginal_ms"] = (
            out["compiled_round_trip_ms"] - out["compiled_round_trip_small_ms"]
        )
    finally:
        for actor in (a, b):
            ray.kill(actor)
    out["target_ms"] = TARGET_TRANSFER_MS
    out["target_met"] = out["compiled_round_trip_ms"] < TARGET_TRANSFER_MS
    return out


# -- (b) and (c) pipeline throughput and the simulator -------------------------------------------


def _problem(sizes: Sequence[int], batch: int, dtype: str, seed: int = 0) -> tuple:
    from graphpart.ir import mlp
    from graphpart.optim import make_optimizer
    from graphpart.params import init_params

    g = mlp(list(sizes), activation="relu", bias=True, loss="cross_entropy")
    params = init_params(g, seed, dtype)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    opt = make_optimizer("adam", lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8)
    return g, params, X, y, opt


def _machine_busy_s() -> float | None:
    """CPU seconds all processes on this machine have used (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _actor_cpu_s(engine: Any) -> list[float]:
    """CPU seconds used so far by each stage actor's process (all its threads)."""
    import ray

    return ray.get(
        [
            a.__ray_call__.remote(lambda self: time.process_time())
            for a in getattr(engine, "actors", [])
        ]
    )


def _time_steps(engine: Any, X: np.ndarray, y: np.ndarray, warmup: int, steps: int) -> dict:
    """Median/mean step time of `steps` steps after `warmup`; stage busy time, and CPU time of
    the driver and of each stage process, over the timed window."""
    for _ in range(warmup):
        engine.step(X, y)
    before = engine.stats() if hasattr(engine, "stats") else None
    cpu0, drv0, load0 = _actor_cpu_s(engine), time.process_time(), os.getloadavg()[0]
    mach0, wall0 = _machine_busy_s(), time.perf_counter()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step(X, y)
        times.append(time.perf_counter() - t)
    drv, cpu1 = time.process_time() - drv0, _actor_cpu_s(engine)
    mach1, wall = _machine_busy_s(), time.perf_counter() - wall0
    out = {
        "step_s_median": statistics.median(times),
        "step_s_mean": statistics.fmean(times),
        "step_s_min": min(times),
        "steps": steps,
        "load_avg_1m": [load0, os.getloadavg()[0]],
        "driver_cpu_ms_per_step": drv / steps * 1e3,
        "stage_cpu_ms_per_step": [(b - a) / steps * 1e3 for a, b in zip(cpu0, cpu1, strict=True)],
    }
    out["samples_per_s"] = len(X) / out["step_s_median"]
    if mach0 is not None and mach1 is not None:  # cores busy with other people's work
        ours = drv + sum(b - a for a, b in zip(cpu0, cpu1, strict=True))
        out["other_cpu_cores"] = max(0.0, (mach1 - mach0 - ours) / wall)
    if before is not None:
        after = engine.stats()
        out["busy_s"] = [
            {k: (a["busy_s"][k] - b["busy_s"][k]) for k in a["busy_s"]}
            for a, b in zip(after, before, strict=True)
        ]
    return out


def predict_step(
    kind: str,
    microbatches: int,
    fwd: Sequence[float],
    bwd: Sequence[float],
    finish: Sequence[float],
    comm: float,
) -> dict[str, float]:
    """Step time the simulator predicts from per-micro-batch stage times (+ each stage's
    finish after its last action), and its bubble fraction."""
    from graphpart.plan import schedule as sch

    tl = sch.simulate(sch.make(kind, len(fwd), microbatches), list(fwd), list(bwd), comm)
    ends = [max(e.end for e in tl.events if e.stage == k) for k in range(len(fwd))]
    return {
        "step_s": max(e + f for e, f in zip(ends, finish, strict=True)),
        "makespan_s": tl.makespan,
        "bubble": tl.bubble,
    }


def call_overhead_s(timed: dict[str, Any], microbatches: int) -> list[float]:
    """Per stage, the CPU seconds its process spends per call outside the stage's own work.

    Each stage runs 2M + 1 actions a step (M forwards, M backwards, finish), each its own call
    on RayEngine (on PushRayEngine one call, plus the tensors it sends and receives). Its CPU
    time per step (all threads: Ray's argument fetch, result store, task bookkeeping) less its
    busy time (the work inside the calls), spread over those calls, is what each call costs on
    top of the work. Valid where a stage waiting for input sleeps (ray, push); not for
    a compiled graph, whose waiting actors spin and so burn CPU for the whole step.
    """
    calls = 2 * microbatches + 1
    steps = timed["steps"]
    return [
        max(0.0, cpu_ms / 1e3 - (b["F"] + b["B"] + b["step"]) / steps) / calls
        for cpu_ms, b in zip(timed["stage_cpu_ms_per_step"], timed["busy_s"], strict=True)
    ]


def measure_pipeline(
    sizes: Sequence[int],
    batch: int,
    dtype: str,
    microbatches: Sequence[int],
    schedules: Sequence[str],
    warmup: int,
    steps: int,
    comm_s: dict[str, float],
) -> list[dict[str, Any]]:
    """K=2 pipeline on RayEngine, PushRayEngine and CompiledRayEngine, each (schedule, M)
    measured and compared with the simulator fed the stage times measured in the same window:
    the work inside each call alone ('kernels'), and that plus each stage's per-call cost."""
    from graphpart.engines.compiled import CompiledRayEngine
    from graphpart.plan.partition import partition
    from graphpart.engines.push import PushRayEngine
    from graphpart.engines.tasks import RayEngine

    g, params, X, y, opt = _problem(sizes, batch, dtype)
    plan = partition(g, 2, "balanced")
    rows = []
    for name, cls in (("ray", RayEngine), ("push", PushRayEngine), ("compiled", CompiledRayEngine)):
        with cls(plan, params, opt, max_rows=batch, keep_events=False) as eng:
            for kind in schedules:
                for m in microbatches:
                    eng.reschedule(kind, m)
                    # compiled: step 1 ordinary, 2 compiles, 3 is the graph's first (slow) run
                    r = _time_steps(eng, X, y, warmup + (3 if name == "compiled" else 0), steps)
                    per = steps * m
                    fwd = [b["F"] / per for b in r["busy_s"]]
                    bwd = [b["B"] / per for b in r["busy_s"]]
                    fin = [b["step"] / steps for b in r["busy_s"]]
                    pred = predict_step(kind, m, fwd, bwd, fin, comm_s[name])
                    over = call_overhead_s(r, m) if name != "compiled" else [0.0] * len(fwd)
                    cal = predict_step(
                        kind,
                        m,
                        [f + o for f, o in zip(fwd, over, strict=True)],
                        [b + o for b, o in zip(bwd, over, strict=True)],
                        [f + o for f, o in zip(fin, over, strict=True)],
                        comm_s[name],
                    )
                    row = {
                        "engine": name,
                        "schedule": kind,
                        "microbatches": m,
                        "stage_split": plan.sizes(),
                        **r,
                        "fwd_ms": [v * 1e3 for v in fwd],
                        "bwd_ms": [v * 1e3 for v in bwd],
                        "finish_ms": [v * 1e3 for v in fin],
                        "comm_ms": comm_s[name] * 1e3,
                        "call_overhead_ms": [v * 1e3 for v in over],
                        "predicted_kernels_step_s": pred["step_s"],
                        "predicted_step_s": cal["step_s"],
                        "predicted_bubble": cal["bubble"],
                        "kernels_ratio": pred["step_s"] / r["step_s_median"],
                        "throughput_ratio": cal["step_s"] / r["step_s_median"],
                    }
                    if name == "compiled":
                        row["compiled_steps"] = eng.compiled_steps
                        row["compile_errors"] = {str(k): v for k, v in eng.compile_errors.items()}
                    row["target_met"] = row["throughput_ratio"] >= TARGET_RATIO
                    rows.append(row)
    return rows


def measure_single(
    sizes: Sequence[int], batch: int, dtype: str, warmup: int, steps: int
) -> list[dict[str, Any]]:
    """The same model in this process, one stage: BLAS on every core, and on one thread."""
    from threadpoolctl import threadpool_limits

    from graphpart.engines.engine import LocalEngine
    from graphpart.plan.partition import partition

    g, params, X, y, opt = _problem(sizes, batch, dtype)
    out = []
    for threads in (os.cpu_count() or 1, 1):
        with threadpool_limits(threads):
            eng = LocalEngine(partition(g, 1), params, opt, max_rows=batch, keep_events=False)
            r = _time_steps(eng, X, y, warmup, steps)
            r.pop("busy_s", None)
            r["stage_cpu_ms_per_step"] = [r["driver_cpu_ms_per_step"]]
            out.append({"engine": "local", "threads": threads, **r})
    return out


# -- driver ---------------------------------------------------------------------------------------


def run(
    sizes: Sequence[int] = SIZES,
    batch: int = 256,
    dtype: str = "float32",
    microbatches: Sequence[int] = (1, 2, 4, 8),
    schedules: Sequence[str] = ("1f1b", "gpipe"),
    warmup: int = 3,
    steps: int = 15,
    transfer_n: int = 200,
) -> dict[str, Any]:
    import ray

    from graphpart.engines.tasks import start_ray

    started = start_ray(num_cpus=2)
    try:
        res: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "ray_cpus": ray.cluster_resources().get("CPU"),
                "python": platform.python_version(),
                "ray": ray.__version__,
                "numpy": np.__version__,
                "load_avg_start": os.getloadavg(),
            },
            "model": {
                "sizes": list(sizes),
                "batch": batch,
                "dtype": dtype,
                "stages": 2,
                "optimizer": "adam",
            },
        }
        res["transfer"] = t = measure_transfer(transfer_n)
        comm = {
            "ray": t["tasks_pipelined_per_item_ms"] / 1e3,
            "push": t["push_hop_ms"] / 1e3,
            "compiled": t["compiled_round_trip_ms"] / 1e3,
        }
        res["single"] = measure_single(sizes, batch, dtype, warmup, steps)
        res["pipeline"] = measure_pipeline(
            sizes, batch, dtype, microbatches, schedules, warmup, steps, comm
        )
        best1 = max(r["samples_per_s"] for r in res["single"])
        for r in res["pipeline"]:
            r["speedup_vs_best_single"] = r["samples_per_s"] / best1
        res["machine"]["load_avg_end"] = os.getloadavg()
        res["targets"] = {
            "transfer_under_1ms": t["target_met"],
            "throughput_within_10pct_of_simulator": {
                f"{r['engine']}/{r['schedule']}/M={r['microbatches']}": r["target_met"]
                for r in res["pipeline"]
            },
        }
        return res
    finally:
        if started:
            ray.shutdown()


def format_report(res: dict[str, Any]) -> str:
    t, m, mach = res["transfer"], res["model"], res["machine"]
    lines = [
        f"machine: {mach['cpus']} cpus, Ray {mach['ray']}, load avg "
        f"{mach['load_avg_start'][0]:.2f} -> {mach['load_avg_end'][0]:.2f}",
        f"(a) boundary transfer of {t['shape'][0]}x{t['shape'][1]} float32 "
        f"({t['bytes'] / 2**20:.0f} MiB), median of {t['samples']}:",
        f"  empty actor call                     {t['empty_call_ms']:7.3f} ms",
        f"  tasks + object refs, round trip      {t['tasks_round_trip_ms']:7.3f} ms "
        f"(1-float array: {t['tasks_round_trip_small_ms']:.3f} ms)",
        f"  tasks + object refs, pipelined       {t['tasks_pipelined_per_item_ms']:7.3f} ms"
        " per item",
        f"  push: actor a calls actor b with it  {t['push_hop_ms']:7.3f} ms "
        f"(driver->a->b->a->driver {t['push_round_trip_ms']:.3f} ms, less an empty call)",
        f"  compiled graph, driver->a->b->driver {t['compiled_round_trip_ms']:7.3f} ms "
        f"(1-float array: {t['compiled_round_trip_small_ms']:.3f} ms; "
        f"1 MiB adds {t['compiled_marginal_ms']:.3f} ms)",
        f"  target < {t['target_ms']:g} ms: {'met' if t['target_met'] else 'NOT met'}"
        " (round trip, three hops, as the upper bound of one)",
        "  an idle compiled graph keeps its actors busy polling: "
        + ", ".join(f"{c:.2f}" for c in t["compiled_idle_cpu_cores"])
        + " cores",
        f"(b) MLP {'-'.join(map(str, m['sizes']))}, batch {m['batch']}, {m['dtype']}, "
        "adam; samples/s from the median step:",
    ]
    for r in res["single"]:
        lines.append(
            f"  one process, {r['threads']} BLAS thread(s): {r['samples_per_s']:8.0f} "
            f"samples/s ({r['step_s_median'] * 1e3:.1f} ms/step, "
            f"{r['driver_cpu_ms_per_step']:.1f} ms CPU/step; other processes "
            f"{r.get('other_cpu_cores', float('nan')):.2f} cores)"
        )
    lines.append(
        "  K=2 split " + str(res["pipeline"][0]["stage_split"]) + " layers; (c) "
        "simulator fed this run's stage times (+ transfer as comm, + finish): "
        "'kern' the work inside each call alone, 'pred' that plus each stage's "
        "measured per-call cost (not for compiled; see call_overhead_s)"
    )
    lines.append(
        f"  {'engine':9}{'sched':6}{'M':>3}{'samples/s':>11}{'vs 1proc':>9}"
        f"{'step ms':>9}{'kern ms':>9}{'ratio':>7}{'pred ms':>9}{'ratio':>7}"
        f"{'bubble':>8}  F/B ms per mb (stage 0 | stage 1); per-call ms; CPU ms/step: "
        "driver, stages; other processes' cores"
    )
    for r in res["pipeline"]:
        fb = " | ".join(f"{f:.2f}/{b:.2f}" for f, b in zip(r["fwd_ms"], r["bwd_ms"], strict=True))
        lines.append(
            f"  {r['engine']:9}{r['schedule']:6}{r['microbatches']:>3}{r['samples_per_s']:>11.0f}"
            f"{r['speedup_vs_best_single']:>9.2f}{r['step_s_median'] * 1e3:>9.1f}"
            f"{r['predicted_kernels_step_s'] * 1e3:>9.1f}{r['kernels_ratio']:>7.2f}"
            f"{r['predicted_step_s'] * 1e3:>9.1f}{r['throughput_ratio']:>7.2f}"
            f"{r['predicted_bubble']:>8.1%}  {fb}; "
            + "/".join(f"{c:.2f}" for c in r["call_overhead_ms"])
            + f"; {r['driver_cpu_ms_per_step']:.0f}, "
            + "/".join(f"{c:.0f}" for c in r["stage_cpu_ms_per_step"])
            + f"; {r.get('other_cpu_cores', float('nan')):.2f}"
            + ("" if r["target_met"] else "  <- below 0.9")
        )
    met = sum(res["targets"]["throughput_within_10pct_of_simulator"].values())
    total = len(res["targets"]["throughput_within_10pct_of_simulator"])
    lines.append(
        f"throughput within 10% of the simulator: {met}/{total} configurations; "
        f"transfer under 1 ms: {'yes' if t['target_met'] else 'no'}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphpart.tools.bench_pipeline", description=__doc__)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="layer widths d,h1,..,q")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--microbatches", default="1,2,4,8", help="comma list of M")
    ap.add_argument("--schedules", default="1f1b,gpipe", help="comma list of 1f1b, gpipe")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    ap.add_argument("--transfer-samples", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    res = run(
        [int(s) for s in a.sizes.split(",")],
        a.batch,
        a.dtype,
        [int(s) for s in a.microbatches.split(",")],
        [s.strip() for s in a.schedules.split(",") if s.strip()],
        a.warmup,
        a.steps,
        a.transfer_samples,
    )
    print(json.dumps(res, indent=1) if a.json else format_report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
