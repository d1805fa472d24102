"""Training-step benchmark: graphpart's engine vs hand-written NumPy (and PyTorch) vs BLAS peak."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (784, 1024, 1024, 10)
# SGD is measured with momentum (a state buffer per parameter, as people train with it).
OPTIMIZER_KW: dict[str, dict[str, float]] = {
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "sgd": {"lr": 0.01, "momentum": 0.9},
}
CONTENDERS = ("graphpart", "numpy", "torch")


# -- what the step costs --------------------------------------------------------------------


def step_flops(sizes: Sequence[int], batch: int) -> int:
    """Matmul FLOPs of one training step: forward 2*B*sum(n_in*n_out), backward dW for every
    layer plus dx for every layer but the first (the data needs no gradient)."""
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    fwd = 2 * batch * sum(a * b for a, b in pairs)
    return 3 * fwd - 2 * batch * sizes[0] * sizes[1]


def matmul_gflops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an n x n @ n x n product through NumPy's BLAS (best and median of `repeats`)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    np.matmul(a, b, out=out)  # warm-up: threads started, pages touched
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    flop = 2.0 * n**3
    return {
        "n": n,
        "gflops": flop / min(times) / 1e9,
        "gflops_median": flop / statistics.median(times) / 1e9,
    }


def step_matmul_times(
    sizes: Sequence[int], batch: int, dtype: str = "float32", repeats: int = 30
) -> dict[str, float]:
    """Time only the step's own matrix products (NumPy, `out=`, the executor's transposes).

    This is what the step would cost if everything but the matmuls were free, at the shapes
    the step really multiplies (small, skinny products reach less than the square peak).
    """
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    n = len(sizes) - 1
    ws = [rng.standard_normal((sizes[i + 1], sizes[i])).astype(dt) for i in range(n)]
    hs = [rng.standard_normal((batch, s)).astype(dt) for s in sizes]
    dzs = [np.empty((batch, s), dt) for s in sizes]
    dws = [np.empty_like(w) for w in ws]

    def once() -> None:
        for i in range(n):  # forward: z = h W^T
            np.matmul(hs[i], ws[i].T, out=dzs[i + 1])
        for i in reversed(range(n)):  # backward: dW = dz^T h, dh = dz W
            np.matmul(hs[i + 1].T, hs[i], out=dws[i])
            if i > 0:
                np.matmul(hs[i + 1], ws[i], out=dzs[i])

    once()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return {"best_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times)}


# -- the contenders -------------------------------------------------------------------------


def make_graphpart(
    params: Mapping[str, np.ndarray],
    sizes: Sequence[int],
    batch: int,
    activation: str,
    bias: bool,
    optimizer: str,
) -> Any:
    """graphpart's in-process engine on one stage, with a copy of `params`."""
    from graphpart.engines.engine import LocalEngine
    from graphpart.ir import mlp
    from graphpart.optim import make_optimizer
    from graphpart.plan.partition import partition

    g = mlp(list(sizes), activation=activation, bias=bias, loss="cross_entropy", weight_decay=0.0)
    return LocalEngine(
        partition(g, 1),
        {k: v.copy() for k, v in params.items()},
        make_optimizer(optimizer, **OPTIMIZER_KW[optimizer]),
        microbatches=1,
        schedule="1f1b",
        max_rows=batch,
        keep_events=False,
    )


def init_mlp_params(
    sizes: Sequence[int], activation: str, bias: bool, dtype: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """graphpart's own initial parameters for the MLP (W1, b1, ..., by name)."""
    from graphpart.ir import mlp
    from graphpart.params import init_params

    g = mlp(list(sizes), activation=activation, bias=bias, loss="cross_entropy")
    return init_params(g, seed, dtype)


def _act(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0)
    if activation == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if activation == "tanh":
        return np.tanh(z)
    return z


def _act_grad(dh: np.ndarray, h: np.ndarray, activation: str) -> np.ndarray:
    """dz from dh and the activation's output h."""
    if activation == "relu":
        return dh * (h > 0)
    if activation == "sigmoid":
        return dh * (h * (1 - h))
    if activation == "tanh":
        return dh * (1 - h * h)
    return dh


class NumpyMLP:
    """The same network, loss and optimizer written as plain, clean NumPy (the baseline).

    Softmax cross-entropy averaged over the batch; Adam and SGD with PyTorch's update rules
    (the ones graphpart's kernels implement). Parameters are named as graphpart names them.
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        activation: str,
        bias: bool,
        optimizer: str,
        **opt_kw: float,
    ) -> None:
        self.p = {k: np.array(v) for k, v in params.items()}
        self.layers = sum(1 for k in self.p if k.startswith("W"))
        self.activation = activation
        self.bias = bias
        self.optimizer = optimizer
        self.hp = {**OPTIMIZER_KW[optimizer], **opt_kw}
        slots = 2 if optimizer == "adam" else (1 if self.hp.get("momentum") else 0)
        self.state = {k: [np.zeros_like(v) for _ in range(slots)] for k, v in self.p.items()}
        self.t = 0

    def loss_and_grads(
        self, x: np.ndarray, y: np.ndarray, phases: dict[str, float] | None = None
    ) -> tuple[float, dict]:
        t0 = time.perf_counter()
        p, n, act = self.p, self.layers, self.activation
        hs = [x]
        z = x
        for i in range(1, n + 1):
            z = hs[-1] @ p[f"W{i}"].T
            if self.bias:
                z += p[f"b{i}"]
            if i < n:
                hs.append(_act(z, act))
        rows = np.arange(len(x))
        zmax = z.max(axis=1, keepdims=True)
        e = np.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) + zmax[:, 0] - z[rows, y]))
        t1 = time.perf_counter()
        g = e / s  # dL/do = (softmax - onehot) / B
        g[rows, y] -= 1
        g /= len(x)
        grads: dict[str, np.ndarray] = {}
        for i in range(n, 0, -1):
            grads[f"W{i}"] = g.T @ hs[i - 1]
            if self.bias:
                grads[f"b{i}"] = g.sum(axis=0)
            if i > 1:
                g = _act_grad(g @ p[f"W{i}"], hs[i - 1], act)
        if phases is not None:
            phases["forward"] = t1 - t0
            phases["backward"] = time.perf_counter() - t1
        return loss, grads

    def update(self, grads: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        hp = self.hp
        for k, w in self.p.items():
            g = grads[k]
            if self.optimizer == "adam":
                b1, b2 = hp["beta1"], hp["beta2"]
                m, v = self.state[k]
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * (g * g)
                denom = np.sqrt(v) / math.sqrt(1 - b2**self.t) + hp["eps"]
                w -= hp["lr"] / (1 - b1**self.t) * m / denom
            elif self.state[k]:  # SGD with momentum
                buf = self.state[k][0]
                buf *= hp["momentum"]
                buf += g
                w -= hp["lr"] * buf
            else:
                w -= hp["lr"] * g

    def step(self, x: np.ndarray, y: np.ndarray, phases: dict[str, float] | None = None) -> float:
        loss, grads = self.loss_and_grads(x, y, phases)
        t = time.perf_counter()
        self.update(grads)
        if phases is not None:
            phases["update"] = time.perf_counter() - t
        return loss


def make_torch_step(
    params: Mapping[str, np.ndarray],
    sizes: Sequence[int],
    activation: str,
    bias: bool,
    optimizer: str,
    x: np.ndarray,
    y: np.ndarray,
) -> tuple[Callable[[], None], Any] | None:
    """(step, model): a PyTorch (CPU) training step of the same model on (x, y), starting
    from `params`; None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    acts = {
        "relu": torch.nn.ReLU,
        "sigmoid": torch.nn.Sigmoid,
        "tanh": torch.nn.Tanh,
        "identity": torch.nn.Identity,
    }
    n = len(sizes) - 1
    layers: list[Any] = []
    with torch.no_grad():
        for i in range(1, n + 1):
            lin = torch.nn.Linear(
                sizes[i - 1], sizes[i], bias=bias, dtype=torch.from_numpy(x[:1]).dtype
            )
            lin.weight.copy_(torch.from_numpy(params[f"W{i}"]))
            if bias:
                lin.bias.copy_(torch.from_numpy(params[f"b{i}"]))
            layers.append(lin)
            if i < n:
                layers.append(acts[activation]())
    model = torch.nn.Sequential(*layers)
    crit = torch.nn.CrossEntropyLoss()
    hp = OPTIMIZER_KW[optimizer]
    if optimizer == "adam":
        opt: Any = torch.optim.Adam(
            model.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"]
        )
    else:
        opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = crit(model(xt), yt)
        loss.backward()
        opt.step()

    return step, model


# -- environment ----------------------------------------------------------------------------


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    return [{k: d.get(k) for k in keys} for d in threadpool_info() if d.get("user_api") == "blas"]


def environment() -> dict[str, Any]:
    """Versions, CPU, cores and the BLAS libraries loaded (with their thread counts)."""
    import numba

    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch_version,
        "cpu": _cpu_model(),
        "cores": _cores(),
        "blas": _blas_info(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


class ForeignLoad:
    """Share of the machine's CPU time that other processes (and the hypervisor's steal) took
    between start() and stop(): 0 on a quiet machine; None where /proc/stat is missing."""

    def __init__(self) -> None:
        self.value: float | None = None
        self._t0: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            line = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        v = [int(f) for f in line[1:9]]  # user nice system idle iowait irq softirq steal
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return busy, t.user + t.system, time.perf_counter()

    def start(self) -> ForeignLoad:
        self._t0 = self._sample()
        return self

    def stop(self) -> float | None:
        t1 = self._sample()
        if self._t0 is not None and t1 is not None and t1[2] > self._t0[2]:
            busy, own, wall = (b - a for a, b in zip(self._t0, t1, strict=True))
            self.value = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))
        return self.value


def run_delay_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux
    schedstat): what other processes took from us. None where it is not available."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


@contextlib.contextmanager
def _threads(n: int, with_torch: bool) -> Iterator[None]:
    """Every thread pool (BLAS, OpenMP, torch's intra-op) at n threads for the duration."""
    stack = contextlib.ExitStack()
    with stack:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=n))
        except ImportError:
            pass
        if with_torch:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, before)
        yield


# -- the measurement ------------------------------------------------------------------------


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
    worker = eng.workers[0]
    ref = NumpyMLP(params, activation, bias, optimizer)
    made = make_torch_step(params, sizes, activation, bias, optimizer, x, y) if use_torch else None
    tstep = made[0] if made else None

    phases: dict[str, dict[str, list[float]]] = {"graphpart": {}, "numpy": {}}

    def run_graphpart(record: bool) -> None:
        b0 = dict(worker.busy)
        eng.step(x, y)
        if record:
            for key, name in (("F", "forward"), ("B", "backward"), ("step", "update")):
                phases["graphpart"].setdefault(name, []).append(worker.busy[key] - b0[key])

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


def _paired_ratio(a: list[float], ra: list[int], b: list[float], rb: list[int]) -> float:
    """Median over rounds of (a's median in the round / b's): blocks run within a second of
    each other, so a machine that drifts slower or faster over the run cancels out."""
    ratios = []
    for r in sorted(set(ra) & set(rb)):
        ta = [t for t, k in zip(a, ra, strict=True) if k == r]
        tb = [t for t, k in zip(b, rb, strict=True) if k == r]
        ratios.append(statistics.median(ta) / statistics.median(tb))
    return statistics.median(ratios)


def measure_startup(
    sizes: Sequence[int] = SIZES,
    batch: int = 256,
    dtype: str = "float32",
    activation: str = "relu",
    runs: int = 2,
) -> list[dict[str, float]]:
    """First-step cost in fresh processes sharing a fresh, empty NUMBA_CACHE_DIR.

    Run 1 compiles the kernels (and writes the cache); later runs load them from the cache.
    Each entry: import_s (numpy, graphpart), build_s (the engine; its workers compile or load
    every kernel they use), first_step_s, second_step_s, process_s (the whole process).
    """
    code = (
        "import json, sys, time\n"
        "t0 = time.perf_counter()\n"
        "import numpy as np\n"
        "from graphpart.tools.bench import init_mlp_params, make_graphpart\n"
        "sizes, batch, dtype, act = json.loads(sys.argv[1])\n"
        "p = init_mlp_params(sizes, act, True, dtype)\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((batch, sizes[0])).astype(dtype)\n"
        "y = rng.integers(0, sizes[-1], batch)\n"
        "t1 = time.perf_counter()\n"
        "eng = make_graphpart(p, sizes, batch, act, True, 'adam')\n"
        "t2 = time.perf_counter(); eng.step(x, y); t3 = time.perf_counter()\n"
        "eng.step(x, y); t4 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'build_s': t2 - t1, 'first_step_s': t3 - t2,"
        " 'second_step_s': t4 - t3}))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    out = []
    with tempfile.TemporaryDirectory(prefix="graphpart-numba-cache-") as cache:
        env = {
            **os.environ,
            "NUMBA_CACHE_DIR": cache,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        arg = json.dumps([list(sizes), batch, dtype, activation])
        for _ in range(runs):
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", code, arg],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            )
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            rec["process_s"] = time.perf_counter() - t
            out.append(rec)
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
    n = threads or _cores()
    env = environment()
    flops = step_flops(sizes, batch)
    load = ForeignLoad().start()
    with _threads(n, torch):
        env["blas"] = _blas_info()  # as limited for the run
        peak = matmul_gflops(matmul_n, dtype, matmul_repeats)
        mm = step_matmul_times(sizes, batch, dtype, repeats)
        cases = [
            _run_case(
                sizes, batch, dtype, activation, b, o, repeats, warmup, torch, seed, rounds, pause
            )
            for o in optimizers
            for b in biases
        ]
        after = matmul_gflops(matmul_n, dtype, matmul_repeats)  # the machine's speed drifts:
        if after["gflops"] > peak["gflops"]:  # the peak is the better of before and after
            peak = after
    floor_ms = 1e3 * flops / (peak["gflops"] * 1e9)
    for c in cases:
        c["peak_fraction"] = floor_ms / c["graphpart"]["median_ms"]
        c["peak_fraction_best"] = floor_ms / c["graphpart"]["best_ms"]
        c["graphpart"]["gflops"] = flops / (c["graphpart"]["median_ms"] * 1e6)
    env["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
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
        "startup": measure_startup(sizes, batch, dtype, activation) if startup else None,
    }


# -- report ---------------------------------------------------------------------------------


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_report(result: Mapping[str, Any]) -> str:
    """A plain-text report of a run_step_benchmark result."""
    c, env, mm = result["config"], result["env"], result["matmul"]
    blas = (
        ", ".join(
            f"{b['internal_api']} {b['version']} ({b['num_threads']} threads, "
            f"{b['threading_layer']}, {b['architecture']})"
            for b in env["blas"]
        )
        or "?"
    )
    lines = [
        f"MLP {'-'.join(map(str, c['sizes']))}, batch {c['batch']}, {c['dtype']}, "
        f"{c['activation']}, softmax cross-entropy; {c['repeats']} timed steps after "
        f"{c['warmup']} warm-up, in {c['rounds']} rounds of blocks",
        f"CPU {env['cpu']}, {env['cores']} cores, {c['threads']} threads for every contender; "
        f"BLAS {blas}",
        f"python {env['python']}, numpy {env['numpy']}, numba {env['numba']}, "
        f"torch {env['torch'] or 'not installed'}",
        f"matmul {mm['n']}^3 {mm['dtype']}: {mm['gflops']:.1f} GFLOP/s best, before or after "
        f"the cases ({mm['gflops_median']:.1f} median);",
        f"step = {result['flops_per_step'] / 1e9:.3f} GFLOP -> matmul-bound floor "
        f"{mm['floor_ms']:.2f} ms; the step's own matmuls alone (NumPy): "
        f"{result['step_matmuls']['best_ms']:.2f} ms best, "
        f"{result['step_matmuls']['median_ms']:.2f} ms median",
        "",
        "clean: median of the steps that waited for a CPU < 5% of their time (n of them);",
        "gp/this: graphpart's median over this contender's, paired by round [best over best]",
        "phases: graphpart's and numpy's median forward, backward, update and other ms",
        "",
        f"{'case':<14}{'contender':<11}{'median ms':>10}{'clean ms (n)':>14}{'best ms':>9}"
        f"{'samples/s':>11}{'gp/this  paired  [best]':>24}"
        f"{'fwd':>7}{'bwd':>7}{'update':>7}{'other':>7}",
    ]
    for case in result["cases"]:
        label = f"{case['optimizer']} {'bias' if case['bias'] else 'no bias'}"
        if case.get("foreign_load") is not None:
            lines.append(
                f"{label}: other processes took {100 * case['foreign_load']:.0f}% "
                "of the CPUs meanwhile"
            )
        for name in CONTENDERS:
            r = case[name]
            if r is None:
                continue
            ratio = (
                ""
                if name == "graphpart"
                else (
                    f"{case[f'ratio_{name}']:.3f} {case[f'ratio_{name}_paired']:.3f} "
                    f"[{case[f'ratio_{name}_best']:.3f}]"
                )
            )
            ph = r.get("phases_median_ms")
            cols = (
                "".join(f"{ph[k]:>7.2f}" for k in ("forward", "backward", "update", "other"))
                if ph
                else ""
            )
            clean = f"{_f(r['clean_median_ms'], '.2f')} ({r['clean_steps']})"
            lines.append(
                f"{label:<14}{name:<11}{r['median_ms']:>10.2f}{clean:>14}"
                f"{r['best_ms']:>9.2f}{r['samples_per_s']:>11.0f}{ratio:>24}{cols}"
            )
            label = ""
    h = result["headline"]
    lines += [
        "",
        f"headline ({h['optimizer']}, {'bias' if h['bias'] else 'no bias'}): graphpart/numpy "
        f"{h['ratio_numpy_paired']:.3f} paired by round (medians {h['ratio_numpy']:.3f}, best "
        f"{h['ratio_numpy_best']:.3f}, clean {_f(h['ratio_numpy_clean'], '.3f')}), "
        f"graphpart/torch {_f(h['ratio_torch_paired'], '.3f')} (medians "
        f"{_f(h['ratio_torch'], '.3f')}, best {_f(h['ratio_torch_best'], '.3f')}, "
        f"clean {_f(h['ratio_torch_clean'], '.3f')}); "
        f"{100 * h['peak_fraction']:.0f}% of the matmul peak "
        f"({100 * h['peak_fraction_best']:.0f}% at the best step); in this process the engine "
        f"built in {h['graphpart_build_s']:.2f} s and took its first step in "
        f"{h['graphpart_first_step_s']:.2f} s",
        f"load average before/after: {_f((env.get('loadavg') or [None])[0], '.2f')} / "
        f"{_f((env.get('loadavg_after') or [None])[0], '.2f')}; other processes took "
        f"{_f(None if env.get('foreign_load') is None else 100 * env['foreign_load'], '.0f')}% "
        "of the CPUs during the run (0% is a quiet machine; above a few %, distrust medians)",
    ]
    if result.get("startup"):
        for i, s in enumerate(result["startup"]):
            kind = "empty cache (compile)" if i == 0 else "cached kernels"
            lines.append(
                f"fresh process {i + 1}, {kind}: import {s['import_s']:.2f} s, "
                f"engine build {s['build_s']:.2f} s, "
                f"first step {s['first_step_s']:.2f} s, second step "
                f"{1e3 * s['second_step_s']:.1f} ms, process {s['process_s']:.2f} s"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphpart.tools.bench", description=__doc__)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="layer widths, d,h1,..,q")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--activation", default="relu", choices=("relu", "sigmoid", "tanh", "identity"))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--optimizers", default="adam,sgd", help="comma list of adam, sgd")
    ap.add_argument("--bias", default="both", choices=("both", "yes", "no"))
    ap.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="blocks of back-to-back steps per contender (order rotated)",
    )
    ap.add_argument(
        "--pause",
        type=float,
        default=0.15,
        help="seconds of rest before each block (lets thread pools go idle)",
    )
    ap.add_argument(
        "--startup",
        action="store_true",
        help="also time the first step in fresh processes (compile vs cache)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(args[1:] if args[:1] == ["--"] else args)  # `graphpart bench -- ...`
    res = run_step_benchmark(
        [int(s) for s in a.sizes.split(",")],
        a.batch,
        a.dtype,
        a.activation,
        a.repeats,
        a.warmup,
        optimizers=[s.strip() for s in a.optimizers.split(",") if s.strip()],
        biases={"both": (True, False), "yes": (True,), "no": (False,)}[a.bias],
        threads=a.threads,
        torch=False if a.no_torch else None,
        matmul_n=a.matmul_n,
        rounds=a.rounds,
        pause=a.pause,
        startup=a.startup,
    )
    print(json.dumps(res, indent=1) if a.json else format_report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
