"""The peer a user would pick instead: torch.distributed.pipelining on the same MLP, split and
schedule, as its own processes (one per stage, gloo, one BLAS thread each). Optional: run only
where torch is installed; prints one JSON line of step times from stage 0."""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_torch_pipeline(
    sizes: Sequence[int],
    split: Sequence[int],
    batch: int,
    schedule: str,
    microbatches: int,
    warmup: int,
    steps: int,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Start one process per stage; return stage 0's figures (median step time, samples/s)."""
    port = free_port()
    args = [
        "--sizes", ",".join(map(str, sizes)), "--split", ",".join(map(str, split)),
        "--batch", str(batch), "--schedule", schedule, "--microbatches", str(microbatches),
        "--warmup", str(warmup), "--steps", str(steps), "--port", str(port),
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", __name__, "--rank", str(r), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(len(split))
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout_s)
            if p.returncode != 0:
                raise RuntimeError(f"torch pipeline stage failed: {err.strip().splitlines()[-1:]}")
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return json.loads(outs[0].strip().splitlines()[-1])


def _stage_main(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    torch.set_num_threads(1)
    sizes = [int(s) for s in a.sizes.split(",")]
    split = [int(s) for s in a.split.split(",")]
    world = len(split)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=world
    )
    first = sum(split[: a.rank])
    layers: list[nn.Module] = []
    n_layers = len(sizes) - 1
    for i in range(first, first + split[a.rank]):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < n_layers - 1:
            layers.append(nn.ReLU())
    torch.manual_seed(a.rank)
    module = nn.Sequential(*layers)
    stage = PipelineStage(module, a.rank, world, torch.device("cpu"))
    kinds = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}
    loss = nn.CrossEntropyLoss()
    sched = kinds[a.schedule](stage, n_microbatches=a.microbatches, loss_fn=loss)
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (a.batch,), generator=g)
    times = []
    for i in range(a.warmup + a.steps):
        dist.barrier()
        t = time.perf_counter()
        opt.zero_grad()
        if a.rank == 0:
            sched.step(x)
        elif a.rank == world - 1:
            sched.step(target=y, losses=[])
        else:
            sched.step()
        opt.step()
        dist.barrier()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    dist.destroy_process_group()
    if a.rank == 0:
        times.sort()
        med = times[len(times) // 2]
        print(json.dumps({"step_s_median": med, "samples_per_s": a.batch / med,
                          "torch": torch.__version__, "steps": a.steps}))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for name, typ in (("rank", int), ("batch", int), ("microbatches", int), ("warmup", int),
                      ("steps", int), ("port", int)):  # fmt: skip
        ap.add_argument(f"--{name}", type=typ, required=True)
    for name in ("sizes", "split", "schedule"):
        ap.add_argument(f"--{name}", required=True)
    _stage_main(ap.parse_args(argv))


if __name__ == "__main__":
    main()
