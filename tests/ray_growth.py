"""Control-plane growth: resident memory of a long run's driver, stages and Ray processes.

    python tests/ray_growth.py --steps 100000 [--json out.json] [-- extra train flags]

Runs `graphpart train` (synthetic data, a tiny 8-4-4-2 MLP, batch 4, 2 stages on a local Ray,
one epoch per 10 000 steps) and, every `--every` steps (the run's step rows in
metrics.jsonl), samples the resident memory (RSS) of the driver and of each process under it:
the GCS server, the raylet, the two agents and the stage workers. Reports, per process kind,
the RSS at the first sample after warm-up and at the end, and the growth per 1 000 steps (a
least-squares slope over the samples from `--warmup` steps on).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

KINDS = (  # the first whose pattern is in a process's command line names it
    ("gcs_server", "gcs_server"),
    ("raylet", "raylet/raylet"),
    ("dashboard_agent", "DashboardAgent"),
    ("dashboard_agent", "dashboard/agent.py"),
    ("runtime_env_agent", "RuntimeEnvAgent"),
    ("runtime_env_agent", "runtime_env/agent/main.py"),
    ("stage", "StageActor"),
    ("worker", "ray::"),
    ("worker", "default_worker.py"),
)


def kind_of(cmd: str) -> str:
    """The kind of a Ray process, from its command line ("other" when none fits)."""
    for name, pattern in KINDS:
        if pattern in cmd:
            return name
    return "other"


def sample(driver: psutil.Process) -> dict[str, float]:
    """RSS in MiB of the driver and each process under it, by kind (stages by their pid)."""
    out: dict[str, float] = {"driver": driver.memory_info().rss / 2**20}
    for p in driver.children(recursive=True):
        try:
            kind = kind_of(" ".join(p.cmdline()))
            key = f"{kind}:{p.pid}" if kind in ("stage", "worker") else kind
            out[key] = out.get(key, 0.0) + p.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=2_000, help="sample every N steps")
    ap.add_argument("--warmup", type=int, default=10_000, help="slopes from this step on")
    ap.add_argument("--per-epoch", type=int, default=10_000, help="steps per epoch")
    ap.add_argument("--json", default=None)
    ap.add_argument("extra", nargs="*", help="more `graphpart train` flags (after --)")
    args = ap.parse_args(argv)
    per_epoch = args.per_epoch
    epochs = max(1, args.steps // per_epoch)
    tmp = Path(tempfile.mkdtemp(prefix="graphpart-growth-"))
    cmd = [
        sys.executable, "-m", "graphpart.cli", "train", "--no-progress",
        "--data", "synthetic", "--n-samples", str(per_epoch * 4 * 5 // 4),
        "--n-features", "8", "--n-classes", "2", "--hidden", "4,4", "--batch-size", "4",
        "--stages", "2", "--epochs", str(epochs), "--optimizer", "sgd", "--lr", "0.01",
        "--set", "train.divergence=1e30", "--log-every", str(args.every),
        "--run-dir", str(tmp), "--name", "run", *args.extra,
    ]  # fmt: skip
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr", "w"))  # noqa: SIM115
    driver = psutil.Process(proc.pid)
    metrics = tmp / "run" / "metrics.jsonl"
    samples: list[dict] = []
    seen = 0
    while proc.poll() is None:
        time.sleep(0.2)
        if not metrics.exists():
            continue
        steps = [
            r["step"]
            for r in map(json.loads, metrics.read_text().splitlines())
            if r.get("kind") == "step"
        ]
        if steps and steps[-1] > seen:
            seen = steps[-1]
            try:
                samples.append({"step": seen, "t": round(time.time() - t0, 1), **sample(driver)})
            except psutil.NoSuchProcess:
                break
    code = proc.wait()
    late = [s for s in samples if s["step"] >= args.warmup]
    keys = sorted({k for s in late for k in s if k not in ("step", "t")})
    table = {}
    for k in keys:
        pts = [(s["step"], s[k]) for s in late if k in s]
        if len(pts) < 2:
            continue
        table[k] = {
            "first_mib": round(pts[0][1], 1),
            "last_mib": round(pts[-1][1], 1),
            "per_1000_steps_mib": round(1000 * slope([p[0] for p in pts], [p[1] for p in pts]), 3),
        }
    report = {
        "command": " ".join(cmd[1:]),
        "exit_code": code,
        "steps": seen,
        "seconds": round(time.time() - t0, 1),
        "from_step": args.warmup,
        "processes": table,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**report, "samples": samples}, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["exit_code"] == 0 else 1)
