"""Fault injection: train many short pipelines and kill, stop or interrupt them at random.

    python tests/fault_injection.py --runs 15 --seed 1 [--json out.json]

Each run is `graphpart train` (2 stages on a local Ray, digits, float64) in a subprocess, hit
by one fault at a random moment of its training (0-6 s after its stages are up), in turn:
SIGKILL or SIGSTOP of a stage's process (these runs have train.max_failures = 2 and must
recover by themselves), SIGINT (Ctrl-C), SIGTERM or SIGKILL of the driver (then `--resume`
must finish the run), or none; and, apart from the training moment: SIGKILL of a stage at the
end of an epoch, when its evaluation runs (kill-stage-eval: the epoch's length is measured
from the run's own epoch rows, and the kill aimed at its last 3%); SIGKILL of the driver 0-3 s
after it starts, while Ray and the stages start (kill-driver-startup); a second `--resume` of
the same run directory while it trains (second-writer: it must be refused, exit 2, and the
run go on); and a disk that refuses the checkpoint (disk-full: the driver runs with a file
size limit below the checkpoint's size and SIGXFSZ ignored, so the write fails as on a full
disk; the run must end in one line naming checkpoint.npz, its state "failed", no temporary
file left; `--resume` without the limit then finishes it; this run has one stage, in
process, as the limit would hold Ray's own files too). Reported: runs, faults injected,
recovered (the run ended completed, by itself or after one `--resume`; a run stopped before
its first checkpoint is started again from the beginning by that `--resume`), data lost (a
checkpoint that does not load, a completed run without params.npz, metrics rows repeated or
out of order: must be 0), hangs (a command past its time limit: must be 0), leftover
processes (stage actors of ours alive 10 s after a run ended: must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

ACTOR_NAMES = ("ray::ChannelStageActor", "ray::PushStageActor", "ray::StageActor")
FAULTS = (
    "kill-stage",
    "stop-stage",
    "interrupt-driver",
    "term-driver",
    "kill-driver",
    "none",
    "kill-stage-eval",
    "kill-driver-startup",
    "second-writer",
    "disk-full",
)
DISK_LIMIT = 200_000  # bytes a file may grow to under disk-full: the checkpoint is ~330 kB
LIMIT_S = 240  # a command running longer than this is a hang


@dataclass
class Outcome:
    run: int
    fault: str
    at_s: float
    injected: bool
    exit_code: int | None
    resumed: bool = False
    state: str = ""
    recovered: bool = False
    data_lost: list[str] = field(default_factory=list)
    hang: bool = False
    leftover: int = 0
    before_first_checkpoint: bool = False  # stopped before anything was saved: start again
    last_error: str = ""  # the last `graphpart: error:` line the run printed, if any
    second_writer: str = ""  # second-writer: the refused resume's line (exit 2 expected)


def _last_error(path: Path) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if "graphpart:" in x]
    return lines[-1].strip() if lines else ""


def stage_processes(driver: int) -> list[psutil.Process]:
    """Our stage actors: processes under `driver` (its local Ray's raylet starts them) named
    like a stage actor. Other Ray sessions on the machine are not ours."""
    try:
        kids = psutil.Process(driver).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(cmd.startswith(n) for n in ACTOR_NAMES):
            out.append(p)
    return out


def alive(procs: dict[int, psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _full_disk() -> None:
    """In the child: files stop growing at DISK_LIMIT bytes (writes past it fail with EFBIG,
    as a full disk fails them with ENOSPC), and Ctrl-C acts."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_LIMIT, DISK_LIMIT))
    _default_sigint()


def _epoch_times(run: Path) -> list[float]:
    """The wall times of the run's epoch rows so far."""
    try:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    except (OSError, json.JSONDecodeError):
        return []
    return [r["time"] for r in rows if r.get("kind") == "epoch"]


def _default_sigint() -> None:
    """In the child: Ctrl-C acts again. A shell without job control starts a background
    command with SIGINT ignored, and children inherit that: the interrupt would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_cmd(run_dir: Path, name: str, max_failures: int, stages: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "graphpart.cli", "train", "--no-progress",
        "--stages", str(stages), "--microbatches", "4", "--epochs", "40", "--dtype", "float64",
        "--run-dir", str(run_dir), "--name", name,
        "--set", f"train.max_failures={max_failures}", "--set", "pipeline.step_timeout=5",
    ]  # fmt: skip


def wait(proc: subprocess.Popen, limit: float, seen: dict[int, psutil.Process]) -> int | None:
    """The exit code, or None past `limit` (then the driver is killed); the stage processes
    met on the way are added to `seen`."""
    end = time.time() + limit
    while proc.poll() is None:
        if time.time() > end:
            proc.kill()
            proc.wait()
            return None
        seen.update((p.pid, p) for p in stage_processes(proc.pid))
        time.sleep(0.5)
    return proc.returncode


def check_data(run: Path, completed: bool) -> list[str]:
    lost = []
    ck = run / "checkpoint.npz"
    if ck.exists():
        try:
            with np.load(ck) as z:
                _ = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is data lost
            lost.append(f"checkpoint unreadable: {e}")
    if completed and not (run / "params.npz").exists():
        lost.append("completed without params.npz")
    m = run / "metrics.jsonl"
    if m.exists():
        rows = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
        for kind in {r.get("kind", "") for r in rows}:  # step rows and epoch rows apart
            steps = [r["step"] for r in rows if r.get("kind", "") == kind]
            if steps != sorted(steps) or len(steps) != len(set(steps)):
                lost.append(f"metrics rows repeated or out of order ({kind or 'rows'})")
    return lost


def state_of(run: Path) -> str:
    try:
        return json.loads((run / "summary.json").read_text()).get("state", "")
    except (OSError, json.JSONDecodeError):
        return ""


def one_run(i: int, fault: str, rng: random.Random, root: Path) -> Outcome:
    name = f"run{i:02d}"
    run = root / name
    stage_fault = fault in ("kill-stage", "stop-stage")
    t0 = time.time()
    log = open(root / f"{name}.stderr", "w")  # noqa: SIM115 - closed below
    # a pipe nobody reads would fill (64 KiB of Ray's warnings) and block the driver: a file
    proc = subprocess.Popen(
        # disk-full runs in one process: the file size limit would hold Ray's own files too
        train_cmd(root, name, 2 if stage_fault else 0, 1 if fault == "disk-full" else 2),
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=_full_disk if fault == "disk-full" else _default_sigint,
    )
    o = Outcome(i, fault, 0.0, False, None)
    started, seen = time.time(), {}
    if fault == "kill-driver-startup":  # while Ray and the stages start
        at = rng.uniform(0.0, 3.0)
        time.sleep(at)
        o.at_s = round(time.time() - t0, 2)
        if proc.poll() is None:
            seen.update((p.pid, p) for p in stage_processes(proc.pid))
            proc.kill()
            o.injected = True
    while proc.poll() is None and not stage_processes(proc.pid) and time.time() - started < 60:
        time.sleep(0.1)  # the stages are up: the run is training from here on
    at = rng.uniform(0.0, 6.0)  # the 40 epochs take ~6-8 s once the stages are up
    if fault == "kill-stage-eval":  # aim at the end of epoch 2 or later: its evaluation
        while proc.poll() is None and len(_epoch_times(run)) < 2:
            time.sleep(0.01)
        times = _epoch_times(run)
        if len(times) >= 2:
            length = times[-1] - times[-2]
            at = max(0.0, times[-1] + 0.97 * length - time.time())
    if fault == "second-writer":
        while proc.poll() is None and not (run / "checkpoint.npz").exists():
            time.sleep(0.05)
        at = 0.0
    if fault not in ("kill-driver-startup", "disk-full"):
        o.at_s = round(time.time() - t0 + at, 2)
        time.sleep(at)
    if fault == "second-writer" and proc.poll() is None:
        cmd = [sys.executable, "-m", "graphpart.cli", "train", "--no-progress", "--resume",
               str(run), "--epochs", "60"]  # fmt: skip
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT_S)
        o.second_writer = f"exit {second.returncode}: {second.stderr.strip()[-300:]}"
        o.injected = second.returncode == 2 and "is being written by pid" in second.stderr
    elif fault == "kill-stage-eval" and proc.poll() is None:
        procs = stage_processes(proc.pid)
        seen.update((p.pid, p) for p in procs)
        if procs:
            os.kill(rng.choice(procs).pid, signal.SIGKILL)
            o.injected = True
    elif fault == "disk-full":
        o.injected = True
    elif proc.poll() is None and fault not in ("none", "kill-driver-startup"):
        if stage_fault:
            procs = stage_processes(proc.pid)
            seen.update((p.pid, p) for p in procs)
            if procs:
                victim = rng.choice(procs)
                os.kill(victim.pid, signal.SIGKILL if fault == "kill-stage" else signal.SIGSTOP)
                o.injected = True
        else:
            sig = {"interrupt-driver": signal.SIGINT, "term-driver": signal.SIGTERM}
            proc.send_signal(sig.get(fault, signal.SIGKILL))
            o.injected = True
    o.exit_code = wait(proc, LIMIT_S, seen)
    o.hang = o.exit_code is None
    if fault == "disk-full":
        text = (root / f"{name}.stderr").read_text(errors="replace")
        left = list(run.glob(".*.tmp-*"))
        if "checkpoint.npz" not in text or state_of(run) != "failed" or left:
            o.data_lost.append(f"disk full not reported as it should be (left: {left})")
    if not o.hang and state_of(run) != "completed" and (run / "config.toml").exists():
        if (run / "config.toml").exists():  # what a user does next: resume (no checkpoint:
            # the run starts again from the beginning)
            cmd = [sys.executable, "-m", "graphpart.cli", "train", "--no-progress", "--resume",
                   str(run)]  # fmt: skip
            r = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_default_sigint
            )
            code = wait(r, LIMIT_S, seen)
            o.resumed, o.hang = True, code is None
    log.close()
    o.last_error = _last_error(root / f"{name}.stderr")
    o.state = state_of(run)
    o.recovered = o.state == "completed"
    o.before_first_checkpoint = not o.recovered and not (run / "checkpoint.npz").exists()
    o.data_lost += check_data(run, o.recovered)
    time.sleep(10)
    o.leftover = len(alive(seen))
    for p in alive(seen):  # clean up for the next run, whatever happened
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return o


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the outcomes here")
    ap.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated faults to take in turn (default: all of {', '.join(FAULTS)})",
    )
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if bad := [f for f in faults if f not in FAULTS]:
        ap.error(f"--faults: unknown {', '.join(bad)}; choose from {', '.join(FAULTS)}")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="graphpart-faults-") as tmp:
        for i in range(args.runs):
            fault = faults[i % len(faults)]
            o = one_run(i, fault, rng, Path(tmp))
            outcomes.append(o)
            print(
                f"run {i:2d} {fault:16s} at {o.at_s:5.1f} s  exit {o.exit_code}  "
                f"{'resumed ' if o.resumed else ''}-> {o.state or '?'}  "
                f"lost {len(o.data_lost)}  hang {int(o.hang)}  leftover {o.leftover}"
                + (f"  [{o.last_error}]" if o.last_error else ""),
                flush=True,
            )
    faults = sum(o.injected for o in outcomes)
    summary = {
        "runs": len(outcomes),
        "faults_injected": faults,
        "recovered": sum(o.recovered for o in outcomes if o.injected),
        "stopped_before_first_checkpoint": sum(o.before_first_checkpoint for o in outcomes),
        "completed": sum(o.recovered for o in outcomes),
        "data_lost": sum(len(o.data_lost) for o in outcomes),
        "hangs": sum(o.hang for o in outcomes),
        "leftover_processes": sum(o.leftover for o in outcomes),
    }
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"summary": summary, "runs": [asdict(o) for o in outcomes]}, indent=2)
        )
    bad = summary["data_lost"] or summary["hangs"] or summary["leftover_processes"]
    unfinished = summary["runs"] - summary["completed"] - summary["stopped_before_first_checkpoint"]
    return 1 if bad or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
