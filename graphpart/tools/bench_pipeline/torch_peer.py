"""The peers a user would pick instead, in their own processes (one per rank, gloo, one thread
each): torch.distributed.pipelining on the same MLP, split and schedule, and torch
DistributedDataParallel on the same MLP and batch. Optional: run only where torch is
installed; each prints one JSON line of step times from rank 0.

Each is set up as torch's own docs and tests set it up, with every advantage it can honestly
have (measured in docs/benchmarks.md, "The peers"):
- pipelining: static stage metadata (`PipelineStage(..., input_args=, output_args=)` with the
  micro-batch shapes, so no shape inference runs), `Schedule1F1B` / `ScheduleGPipe` /
  `ScheduleInterleavedZeroBubble` with one stage a rank (torch's ZB1P, = ZB-H1), and with
  virtual stages (`chunks` v a rank) `ScheduleInterleaved1F1B` (rank r holds r, r+K, ...)
  and `ScheduleZBVZeroBubble` (v = 2, rank r holds r and 2K-1-r);
- DDP: `gradient_as_bucket_view=True` (no copy between the gradients and the buckets),
  `static_graph=True`, its bucketed all-reduce overlapping backward;
- one process: the whole model on `threads` threads (no process group);
- all: `torch.optim.Adam(fused=True)` (one fused kernel per tensor: 3-4x faster than the
  default for-each Adam on one thread here), `zero_grad()` as its default (set_to_none: as fast
  as keeping the gradients, or faster, in paired runs), a step timed from its start to a
  barrier after `opt.step()`, like a plain `torchrun` script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from graphpart.engines import read_hwm, reset_hwm

MODES = ("pipeline", "ddp", "single")


# graphpart's names torch has a class for
TORCH_SCHEDULES = ("1f1b", "gpipe", "zb-h1", "interleaved", "zbv")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_peer(
    mode: str,
    sizes: Sequence[int],
    ranks: int,
    batch: int,
    warmup: int,
    steps: int,
    *,
    split: Sequence[int] = (),
    schedule: str = "1f1b",
    microbatches: int = 1,
    threads: int = 1,
    chunks: int = 1,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Start one process per rank, as `torchrun --nproc-per-node ranks` would (the same
    environment variables, one thread each); return rank 0's figures. A pipeline's `split`
    gives the layers of each of its ranks x `chunks` (virtual) stages."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; valid: {', '.join(MODES)}")
    args = [
        "--mode", mode, "--sizes", ",".join(map(str, sizes)),
        "--split", ",".join(map(str, split or [len(sizes) - 1])), "--batch", str(batch),
        "--schedule", schedule, "--microbatches", str(microbatches), "--threads", str(threads),
        "--warmup", str(warmup), "--steps", str(steps), "--chunks", str(chunks),
    ]  # fmt: skip
    env = {
        **os.environ,
        **dict.fromkeys(THREAD_VARS, str(threads)),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(ranks),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", __name__, *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(ranks)
    ]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout_s)
            done.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    lines = done[0][1].strip().splitlines()
    failed = [(r, code, err) for r, (code, _, err) in enumerate(done) if code != 0]
    if not lines or not lines[-1].startswith("{"):
        why = "; ".join(f"rank {r}: {err.strip().splitlines()[-1:]}" for r, _, err in failed)
        raise RuntimeError(f"torch {mode} rank failed: {why or 'no figures printed'}")
    res = json.loads(lines[-1])
    if failed:  # rank 0 printed after every rank's steps and the gather: a failure on exit
        res["exit_problems"] = [
            f"rank {r} exited with {code} after the figures: {err.strip().splitlines()[-1:]}"
            for r, code, err in failed
        ]
    return res


def run_torch_pipeline(
    sizes: Sequence[int],
    split: Sequence[int],
    batch: int,
    schedule: str,
    microbatches: int,
    warmup: int,
    steps: int,
    timeout_s: float = 600.0,
    chunks: int = 1,
) -> dict[str, Any]:
    """torch.distributed.pipelining, one process per device holding `chunks` of the
    len(split) stages (virtual stages where chunks > 1); rank 0's figures."""
    if chunks < 1 or len(split) % chunks:
        raise ValueError(f"chunks={chunks}: must divide the {len(split)} stages of {split}")
    return run_peer(
        "pipeline", sizes, len(split) // chunks, batch, warmup, steps, split=split,
        schedule=schedule, microbatches=microbatches, chunks=chunks, timeout_s=timeout_s,
    )  # fmt: skip


def run_torch_ddp(
    sizes: Sequence[int], replicas: int, batch: int, warmup: int, steps: int
) -> dict[str, Any]:
    """torch DistributedDataParallel, `replicas` processes on batch/replicas rows each."""
    return run_peer("ddp", sizes, replicas, batch, warmup, steps)


def run_torch_single(
    sizes: Sequence[int], threads: int, batch: int, warmup: int, steps: int
) -> dict[str, Any]:
    """The whole model in one torch process on `threads` threads."""
    return run_peer("single", sizes, 1, batch, warmup, steps, threads=threads)


def _mlp(sizes: Sequence[int], first: int, count: int) -> Any:
    from torch import nn

    layers: list[nn.Module] = []
    for i in range(first, first + count):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _baseline(shapes: Sequence[tuple[int, int]], rows: int) -> int:
    """Run this rank's layers once at their real shapes (a forward and a backward of a
    throwaway copy each, then freed), as graphpart's workers run their products before their
    baseline, so the BLAS's work buffers are in both baselines; then reset the kernel's
    high-water mark (workers/hwm.py) and return the resident bytes now."""
    import gc

    import torch

    for n_in, n_out in shapes:
        x = torch.randn(rows, n_in, requires_grad=True)
        layer = torch.nn.Linear(n_in, n_out)
        layer(x).sum().backward()
        del x, layer
    gc.collect()
    reset_hwm()
    return read_hwm() or 0


def _rank_main(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    single = a.mode == "single"
    torch.set_num_threads(a.threads)
    if not single:
        dist.init_process_group("gloo")  # env:// as torchrun sets it
    rank, world = (0, 1) if single else (dist.get_rank(), dist.get_world_size())
    sizes = [int(s) for s in a.sizes.split(",")]
    loss = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (a.batch,), generator=g)
    torch.manual_seed(rank)
    if a.mode == "pipeline":
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
            ScheduleInterleaved1F1B,
            ScheduleInterleavedZeroBubble,
            ScheduleZBVZeroBubble,
        )

        split = [int(s) for s in a.split.split(",")]
        n_stages = len(split)
        # the stages this rank holds: one; interleaved r, r+K, ...; the V r and 2K-1-r
        mine = {
            "interleaved": [rank + c * world for c in range(a.chunks)],
            "zbv": [rank, 2 * world - 1 - rank],
        }.get(a.schedule, [rank])
        mb = -(-a.batch // a.microbatches)
        held = [i for s in mine for i in range(sum(split[:s]), sum(split[: s + 1]))]
        base = _baseline([(sizes[i], sizes[i + 1]) for i in held], mb)
        stages, modules = [], []
        for s in mine:
            first = sum(split[:s])
            modules.append(_mlp(sizes, first, split[s]))
            # static metadata: the shapes of one micro-batch in and out; a stage that
            # receives its input needs its gradient (requires_grad) to send one back
            x_mb = torch.empty(mb, sizes[first], requires_grad=s > 0)
            y_mb = torch.empty(mb, sizes[first + split[s]], requires_grad=True)
            stages.append(
                PipelineStage(
                    modules[-1],
                    s,
                    n_stages,
                    torch.device("cpu"),
                    input_args=(x_mb,),
                    output_args=y_mb,
                )  # fmt: skip
            )
        module = nn.ModuleList(modules)
        kinds = {
            "1f1b": lambda st, **kw: Schedule1F1B(st[0], **kw),
            "gpipe": lambda st, **kw: ScheduleGPipe(st[0], **kw),
            # torch's ZB1P (= ZB-H1) with one stage a rank: its interleaved class, v = 1
            "zb-h1": ScheduleInterleavedZeroBubble,
            "interleaved": ScheduleInterleaved1F1B,
            "zbv": ScheduleZBVZeroBubble,
        }
        if a.schedule not in kinds:
            raise SystemExit(f"torch has no {a.schedule} schedule (it has {', '.join(kinds)})")
        sched = kinds[a.schedule](stages, n_microbatches=a.microbatches, loss_fn=loss)
        has_first, has_last = 0 in mine, n_stages - 1 in mine

        def fwd_bwd() -> None:
            if has_first and has_last:  # the V: rank 0 holds the first stage and the last
                sched.step(x, target=y)
            elif has_first:
                sched.step(x)
            elif has_last:
                sched.step(target=y)
            else:
                sched.step()

    elif single:
        base = _baseline(list(zip(sizes[:-1], sizes[1:], strict=True)), a.batch)
        module = _mlp(sizes, 0, len(sizes) - 1)

        def fwd_bwd() -> None:
            loss(module(x), y).backward()

    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        base = _baseline(list(zip(sizes[:-1], sizes[1:], strict=True)), -(-a.batch // world))
        module = DDP(
            _mlp(sizes, 0, len(sizes) - 1), gradient_as_bucket_view=True, static_graph=True
        )
        rows = -(-a.batch // world)
        xs, ys = x[rank * rows : (rank + 1) * rows], y[rank * rows : (rank + 1) * rows]

        def fwd_bwd() -> None:
            loss(module(xs), ys).backward()

    opt = torch.optim.Adam(module.parameters(), lr=1e-4, fused=True)
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        opt.zero_grad()
        fwd_bwd()
        opt.step()
        if not single:
            dist.barrier()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    mine = (read_hwm() or 0) - base  # this rank's peak over its baseline, as the OS saw it
    growth = [mine]
    if not single:
        growth = [0] * world
        dist.all_gather_object(growth, mine)
        dist.destroy_process_group()
    if rank == 0:
        times.sort()
        med = times[len(times) // 2]
        print(json.dumps({"step_s_median": med, "samples_per_s": a.batch / med, "mode": a.mode,
                  "ranks": world, "torch": torch.__version__, "steps": a.steps,
                  "resident_growth": growth}))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for name, typ in (
        ("batch", int),
        ("microbatches", int),
        ("threads", int),
        ("warmup", int),
        ("steps", int),
        ("chunks", int),
    ):
        ap.add_argument(f"--{name}", type=typ, required=True)
    for name in ("mode", "sizes", "split", "schedule"):
        ap.add_argument(f"--{name}", required=True)
    _rank_main(ap.parse_args(argv))


if __name__ == "__main__":
    main()
