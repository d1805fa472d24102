"""Across machines: a two-node Ray cluster (Ray's own `ray.cluster_utils.Cluster`, both nodes on
this machine) with each stage placed on its own node trains to the same float64 parameters as
one process (the autodiff oracle, 1e-10 relative), on the default transport; the stages really
ran on two nodes, and their boundary tensors went through Ray (the shared-memory channels are
only for neighbours on one node). A local Ray that graphpart starts listens on 127.0.0.1
only: none of its processes accepts connections on another interface. It runs only what
graphpart uses (no API server, log monitor or autoscaler monitor; `GRAPHPART_FULL_RAY=1` gives
`ray.init()`'s whole set), and `stop_ray()` leaves none of its processes behind (nor two heads
after a plain `ray.shutdown()` and a new start).

Each runs in a subprocess: it needs a Ray cluster of its own, not the test session's local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "tests")
    from ray.cluster_utils import Cluster
    from conftest import batches, max_rel, mlp_problem, oracle_training
    from graphpart.engines import Engine
    from graphpart.optim import make_optimizer
    from graphpart.plan.partition import partition

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        g, p0, X, y = mlp_problem([6, 5, 7, 4, 3], 24)
        opt = make_optimizer("adam", lr=0.05)
        want = oracle_training(g, p0, X, y, opt, 8)[1]
        with Engine(partition(g, 2), p0, opt, transport="auto", address=cluster.address,
                    microbatches=2, schedule="1f1b", max_rows=8) as eng:
            for xb, yb in batches(X, y, 8):
                eng.step(xb, yb)
            nodes = eng.transport.get([a.node.remote() for a in eng.transport.actors])
            out = {"err": max_rel(want, eng.get_params()), "nodes": nodes,
                   "transport": eng.transport.name, "local_pairs": eng.transport.local_pairs,
                   "channels": len(eng.transport.channels),
                   "feed": eng.transport.feed is not None}
        print(json.dumps(out))
    finally:
        cluster.shutdown()
    """
)


def test_stages_on_two_nodes_train_like_one_process():
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["transport"] == "shm"
    assert len(set(out["nodes"])) == 2, out["nodes"]  # one stage on each node
    assert out["local_pairs"] == [False]  # so the hop between the stages went by Ray
    # the one channel left is the driver's feed to stage 0, on the driver's node
    assert out["channels"] == int(out["feed"])
    assert out["err"] < 1e-10


GRID = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "tests")
    import numpy as np
    from ray.cluster_utils import Cluster
    from conftest import batches, max_rel, mlp_problem, oracle_training
    from graphpart.engines import DataParallel
    from graphpart.optim import make_optimizer
    from graphpart.plan.partition import partition

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    out = {}
    try:
        g, p0, X, y = mlp_problem([6, 5, 7, 4, 3], 24)
        opt = make_optimizer("adam", lr=0.05)
        want = oracle_training(g, p0, X, y, opt, 8)[1]
        for placement in ("pipeline", "replicas"):
            with DataParallel(partition(g, 2), p0, opt, replicas=2, microbatches=2,
                              max_rows=8, address=cluster.address,
                              placement=placement) as dp:
                for xb, yb in batches(X, y, 8):
                    dp.step(xb, yb)
                nodes = dp.transport.get([a.node.remote() for a in dp.transport.actors])
                params = dp.get_params()
                out[placement] = {"err": max_rel(want, params), "nodes": nodes,
                                  "local_pairs": dp.transport.local_pairs,
                                  "params": {k: v.tolist() for k, v in params.items()}}
        print(json.dumps(out))
    finally:
        cluster.shutdown()
    """
)


def test_a_2x2_grid_on_two_nodes_places_and_trains_like_one_process():
    """R = 2 replicas of K = 2 stages on two nodes: "pipeline" placement keeps each replica's
    stages on one node (its pipeline hop local, the rings across nodes), "replicas" keeps
    each stage's replicas on one node (the rings local, the hops across); both train to the
    oracle's parameters (1e-10) and to the same bits."""
    r = subprocess.run(
        [sys.executable, "-c", GRID],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    pipe, reps = out["pipeline"], out["replicas"]
    # workers r K + k: replica 0 = 0, 1; replica 1 = 2, 3
    assert pipe["nodes"][0] == pipe["nodes"][1] != pipe["nodes"][2] == pipe["nodes"][3]
    assert reps["nodes"][0] == reps["nodes"][2] != reps["nodes"][1] == reps["nodes"][3]
    for o in (pipe, reps):
        assert o["err"] < 1e-10
    assert pipe["params"] == reps["params"]  # bit for bit, whatever the placement


LOCAL = textwrap.dedent(
    """
    import json, psutil, ray
    from graphpart.engines.cluster import start_ray, stop_ray
    assert start_ray(num_cpus=1)

    @ray.remote
    def f():
        return 1

    ray.get(f.remote())  # a worker is up too
    me = psutil.Process()
    ours = {p.pid for p in me.children(recursive=True)} | {me.pid}
    listen = sorted(
        {(psutil.Process(c.pid).name(), c.laddr.ip) for c in psutil.net_connections("inet")
         if c.status == psutil.CONN_LISTEN and c.pid in ours}
    )
    print(json.dumps({"listen": listen, "gcs": ray.get_runtime_context().gcs_address}))
    stop_ray()
    """
)


def test_a_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run(
        [sys.executable, "-c", LOCAL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["gcs"].startswith("127.0.0.1:"), got
    assert got["listen"], "no listening socket found: the check would prove nothing"
    exposed = [(n, ip) for n, ip in got["listen"] if ip not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


LEAN = textwrap.dedent(
    """
    import json, time, psutil, ray
    from graphpart.engines.cluster import start_ray, stop_ray
    assert start_ray(num_cpus=1)

    @ray.remote
    def f():
        return 1

    assert ray.get(f.remote()) == 1
    me = psutil.Process()
    running = [" ".join(p.cmdline()) for p in me.children(recursive=True)]
    ray.shutdown()  # a plain shutdown, then a new start: still one head
    assert start_ray(num_cpus=1)
    time.sleep(1)
    heads = sum("gcs_server" in " ".join(p.cmdline()) for p in me.children(recursive=True))
    stop_ray()
    time.sleep(1)
    left = [" ".join(p.cmdline()) for p in me.children(recursive=True)]
    print(json.dumps({"running": running, "left": left, "heads": heads}))
    """
)

UNUSED = ("dashboard/dashboard.py", "_private/log_monitor.py", "autoscaler/_private/monitor.py")


@pytest.mark.parametrize("full", [False, True], ids=["lean", "full"])
def test_a_local_ray_runs_only_what_graphpart_uses(full):
    env = {k: v for k, v in os.environ.items() if k != "GRAPHPART_FULL_RAY"}
    if full:
        env["GRAPHPART_FULL_RAY"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", LEAN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert any("raylet" in c for c in got["running"]), got["running"]
    unused = [u for u in UNUSED if any(u in c for c in got["running"])]
    assert unused == (list(UNUSED) if full else []), got["running"]
    assert "Token authentication is enabled" not in out.stderr or full  # no warning of ours
    assert got["heads"] == 1, "a second start_ray after a plain ray.shutdown() left two heads"
    left = [c for c in got["left"] if "engines/reaper.py" not in c and "engines.reaper" not in c]
    assert not left, f"left running after stop_ray(): {left}"


KILLED = textwrap.dedent(
    """
    import json, os, signal, psutil, ray
    from graphpart.engines.cluster import start_ray
    assert start_ray(num_cpus=1)

    @ray.remote
    class A:
        def pid(self):
            return os.getpid()

    a = A.remote()
    ray.get(a.pid.remote())
    kids = [p.pid for p in psutil.Process().children(recursive=True)]
    print(json.dumps(kids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no shutdown, no atexit: as the OOM killer would
    """
)


def test_no_ray_process_outlives_a_killed_driver():
    """A local Ray's processes (GCS, raylet, agents, workers) are gone within seconds of its
    driver's SIGKILL: a watchdog started with it reaps what Ray's shutdown never ran for."""
    import time

    import psutil

    out = subprocess.run(
        [sys.executable, "-c", KILLED], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == -9, out.stderr[-2000:]
    pids = json.loads(out.stdout.strip().splitlines()[-1])
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    assert len(pids) >= 3, pids  # gcs_server, raylet, a worker at least
    deadline = time.monotonic() + 15
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        names = []
        for p in alive:
            try:
                names.append(p.name())
            except psutil.NoSuchProcess:
                pass
        if not names:
            break
        assert time.monotonic() < deadline, f"alive 15 s after the driver died: {names}"
        time.sleep(0.5)


KILLED_WITH_CHANNELS = textwrap.dedent(
    """
    import glob, json, os, signal, sys, time
    sys.path.insert(0, "tests")
    from conftest import mlp_problem
    from graphpart.engines import Engine
    from graphpart.optim import make_optimizer
    from graphpart.plan.partition import partition

    before = set(glob.glob("/dev/shm/graphpart-*"))
    g, p0, X, y = mlp_problem([6, 5, 7, 4, 3], 16, seed=0)
    opt = make_optimizer("sgd", lr=0.1)
    eng = Engine(partition(g, 2), p0, opt, microbatches=2, max_rows=8, transport="shm")
    eng.step(X[:8], y[:8])
    print(json.dumps(sorted(set(glob.glob("/dev/shm/graphpart-*")) - before)), flush=True)
    time.sleep(2)  # a run lasts a while: the watchdog looks every 0.5 s
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="channels live in /dev/shm on Linux")
def test_a_killed_driver_leaves_no_channel_files():
    """The shared-memory channels of a pipeline whose driver was SIGKILLed are removed by the
    watchdog (nobody else would: the stages are killed too)."""
    import time

    out = subprocess.run(
        [sys.executable, "-c", KILLED_WITH_CHANNELS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == -9, out.stderr[-2000:]
    files = json.loads(out.stdout.strip().splitlines()[-1])
    assert files, "the pipeline made no channel files: the check would prove nothing"
    deadline = time.monotonic() + 15
    while [f for f in files if os.path.exists(f)]:
        assert time.monotonic() < deadline, [f for f in files if os.path.exists(f)]
        time.sleep(0.5)


# -- joining: a join that cannot succeed ends within seconds, with one line of ours ----------
HOLD = textwrap.dedent(
    """
    import sys, time, ray
    from graphpart.engines.cluster import start_ray
    start_ray(num_cpus=1)
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()  # until the test closes it
    """
)


@pytest.fixture(scope="module")
def other_rays():
    """Two other programs' local Rays, as graphpart starts them (token authentication on):
    one private (loopback only, the default) and one on this machine's address. Yields
    their GCS addresses, (private, reachable)."""
    procs, addrs = [], []
    for env_value in ("0", "1"):
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": env_value}
        env.pop("RAY_AUTH_MODE", None)
        p = subprocess.Popen(
            [sys.executable, "-c", HOLD],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(p)
        addrs.append(p.stdout.readline().strip())
    try:
        assert all(addrs), addrs
        yield tuple(addrs)
    finally:
        for p in procs:
            p.stdin.close()  # start_ray's own shutdown at exit
            p.wait(timeout=60)


def _join(
    address: str, env: dict[str, str], tmp: Path
) -> tuple[subprocess.CompletedProcess, float]:  # noqa: E501
    import time

    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "graphpart.cli", "train", "--stages", "2", "--epochs", "1",
         "--address", address, "--run-dir", str(tmp)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return r, time.monotonic() - t0


def _ray_lines(stderr: str) -> list[str]:
    """Lines of Ray's own loggers (C++ `[date ...]`, Python `date ... WARNING file.py`)."""
    return [x for x in stderr.splitlines() if x.startswith("[20") or " WARNING " in x]


@pytest.mark.parametrize("case", ["auth", "auto-private", "auto-stale-record", "loopback-only"])
def test_a_join_that_cannot_succeed_ends_within_seconds_with_one_line(case, other_rays, tmp_path):
    """`graphpart train --address ...` that cannot join ends with exit 2 within 15 s, and one
    line that says why: a cluster with token authentication and no RAY_AUTH_MODE=token here
    (auth); `auto` with no `ray start` record and only another program's private local Ray
    on the machine (auto-private); `auto` whose record names an address where nothing
    answers (auto-stale-record); host:port of a loopback-only private Ray (loopback-only).
    None of Ray's own log lines reach the terminal."""
    private, reachable = other_rays
    # a user's shell: not this session's local-only switch (its Ray set it in os.environ)
    drop = ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONWARNINGS"] = "ignore"
    env["RAY_TMPDIR"] = str(tmp_path)  # where Ray looks for its record of `ray start`
    (tmp_path / "ray").mkdir()
    address, why = {
        "auth": (reachable, "RAY_AUTH_MODE=token"),
        "auto-private": ("auto", "private local Ray"),
        "auto-stale-record": ("auto", "nothing answers at"),
        "loopback-only": (private, "loopback address only"),
    }[case]
    if case == "auto-stale-record":
        (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
    r, took = _join(address, env, tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("graphpart: error:")]
    assert len(errors) == 1 and why in errors[0], r.stderr[-3000:]
    assert not _ray_lines(r.stderr), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert took < 15, f"{took:.1f} s"


def test_a_join_that_can_succeed_prints_no_ray_lines(other_rays, tmp_path):
    """With RAY_AUTH_MODE=token (the token in ~/.ray, as on this machine) the same cluster is
    joined and the run completes; Ray's join warnings stay off the terminal."""
    _, reachable = other_rays
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    r, _ = _join(reachable, env, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"joined Ray cluster at {reachable}" in r.stderr
    assert not _ray_lines(r.stderr), r.stderr[-3000:]


# -- a long run's control plane stays flat ----------------------------------------------------
def test_a_long_runs_gcs_does_not_grow_with_steps():
    """Ray's GCS server keeps no per-call task events for a graphpart run: over 4 000 steps of
    a tiny 2-stage pipeline (through the CLI) its resident memory grows by under 1 MiB per
    1 000 steps (with Ray's defaults: about 7.5 MiB, measured, to ~365 MiB)."""
    from ray_growth import main as growth

    args = ["--steps", "4000", "--per-epoch", "4000", "--every", "500", "--warmup", "1000"]
    report = growth(args)
    assert report["exit_code"] == 0 and report["steps"] >= 4000, report
    gcs = report["processes"]["gcs_server"]
    assert gcs["per_1000_steps_mib"] < 1.0, report["processes"]


# -- a driver killed during start-up leaves no Ray process -------------------------------------
def _session(sid: int) -> list[str]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:60]}")
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            pass
    return out


@pytest.mark.parametrize(
    "after,wait", [(3, 0.2), (4, 0.1), (5, 0.25), (6, 0.2), (7, 0.3)], ids=lambda v: str(v)
)
def test_a_driver_killed_during_start_up_leaves_no_process(after, wait, tmp_path):
    """`graphpart train --stages 2` SIGKILLed while its local Ray starts (once `after`
    processes of its session are up, and `wait` s more: GCS and raylet, the agents
    starting, the first workers) leaves
    none of them alive 15 s later. The driver runs in a session of its own, so every process
    it started, however reparented, is found by its session id (the watchdog's own session
    is apart)."""
    import time

    p = subprocess.Popen(
        [sys.executable, "-m", "graphpart.cli", "train", "--stages", "2", "--epochs", "1",
         "--no-progress", "--run-dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(_session(p.pid)) < after and p.poll() is None:
        assert time.monotonic() < deadline, _session(p.pid)
        time.sleep(0.02)
    time.sleep(wait)  # a moment within Ray's start-up (not an assertion)
    assert p.poll() is None, "the run ended before the kill: nothing was tested"
    p.kill()
    p.wait()
    deadline = time.monotonic() + 15
    while left := _session(p.pid):
        if time.monotonic() > deadline:
            for line in left:  # clean up, then fail
                try:
                    os.kill(int(line.split()[0]), 9)
                except OSError:
                    pass
            pytest.fail(f"alive 15 s after the driver's SIGKILL: {left}")
        time.sleep(0.25)


def test_a_loopback_address_whose_port_another_program_holds_is_refused(tmp_path):
    """127.0.0.1:P held by one program (a private local Ray) and this machine's address :P by
    another: Ray would join the other one, so the address is refused in one line naming the
    other program's pid, before Ray is asked anything (checked in a fresh process, as a user
    runs it: this session's own Ray changed how this process resolves 127.0.0.1)."""
    import socket

    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    ask = "from ray._private.services import resolve_ip_for_localhost as r; print(r('127.0.0.1'))"
    node = subprocess.run(
        [sys.executable, "-c", ask], env=env, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    if not node or node == "127.0.0.1":
        pytest.fail(f"this machine has no address but the loopback one ({node!r})")
    mine = socket.socket()
    mine.bind(("127.0.0.1", 0))
    mine.listen()
    port = mine.getsockname()[1]
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import socket, sys
            s = socket.socket(); s.bind(({node!r}, {port})); s.listen()
            print("up", flush=True); sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    check = (
        "from graphpart.engines.join import resolve, _listener\n"
        f"print(_listener('127.0.0.1', '{port}'), _listener({node!r}, '{port}'))\n"
        f"resolve('127.0.0.1:{port}')\n"
    )
    try:
        assert other.stdout.readline().strip() == "up"
        r = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.stdout.split() == [str(os.getpid()), str(other.pid)], r.stderr[-2000:]
        msg = r.stderr.strip().splitlines()[-1]
        assert msg.startswith("graphpart.errors.ConfigError: ") and "loopback address only" in msg
        assert f"another program (pid {other.pid}) listens on {node}:{port}" in msg
    finally:
        other.stdin.close()
        other.wait(timeout=30)
        mine.close()
