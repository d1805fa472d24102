"""A worker's calls through two FIFOs (workers/serve.py) and the driver's side of them
(graphpart/engines/transports/serving.py).

Contract: a frame carries any picklable object whole, however many writes and reads the pipe
takes; `serve` runs each (method, args) frame on its target and answers ("ok", result), a
failing call ("error", its message as the driver reads Ray's: the "stage ..." line of a
RuntimeError within it, else its text) without ending the loop, and returns the count of calls
at a None frame. On Ray, a local `shm` engine and a data-parallel one step through their
workers' serve loops (no Ray call a step) and give bit-identical results to the same engines
stepping through Ray calls; any other call between steps stops the loops first and works
(stats, state), the next step starts them again; close() leaves no FIFO behind.
"""

from __future__ import annotations

import glob
import os
import threading

import numpy as np
import pytest

from workers.serve import message, read_frame, serve, write_frame


def test_a_frame_arrives_whole_however_the_pipe_splits_it():
    r, w = os.pipe()
    big = np.arange(200_000, dtype=np.float64)  # 1.6 MB: many pipe-fulls
    t = threading.Thread(target=lambda: (write_frame(w, ("x", big)), write_frame(w, None)))
    t.start()
    try:
        name, got = read_frame(r)
        assert name == "x" and np.array_equal(got, big)
        assert read_frame(r) is None
    finally:
        t.join(10)
        os.close(r)
        os.close(w)


def test_a_closed_pipe_ends_the_read():
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(EOFError):
        read_frame(r)
    os.close(r)


class _Target:
    def add(self, a: int, b: int) -> int:
        return a + b

    def fail(self) -> None:
        raise RuntimeError("stage 3 (host, pid 1) failed in forward of micro-batch 0: boom")

    def bad(self) -> None:
        raise ValueError("label out of range")


def test_serve_answers_each_call_and_goes_on_after_a_failure(tmp_path):
    ctl, rep = str(tmp_path / "ctl"), str(tmp_path / "rep")
    os.mkfifo(ctl)
    os.mkfifo(rep)
    c, r = os.open(ctl, os.O_RDWR), os.open(rep, os.O_RDWR)
    served: list[int] = []
    t = threading.Thread(target=lambda: served.append(serve(_Target(), ctl, rep)))
    t.start()
    try:
        write_frame(c, ("add", (2, 3)))
        assert read_frame(r) == ("ok", 5)
        write_frame(c, ("fail", ()))
        assert read_frame(r) == (
            "error",
            "stage 3 (host, pid 1) failed in forward of micro-batch 0: boom",
        )
        write_frame(c, ("bad", ()))
        assert read_frame(r) == ("error", "label out of range")
        write_frame(c, ("add", (1, 1)))  # the loop went on after the failures
        assert read_frame(r) == ("ok", 2)
        write_frame(c, None)
        t.join(10)
        assert served == [4]
    finally:
        os.close(c)
        os.close(r)


def test_message_reads_as_rays_first_line():
    wrapped = RuntimeError("Traceback ...\nRuntimeError: stage 1 stopped: a neighbour failed")
    assert message(wrapped) == "stage 1 stopped: a neighbour failed"
    assert message(RuntimeError("replica 1 (vm, pid 2) failed")) == "replica 1 (vm, pid 2) failed"
    assert message(KeyError("w")) == "'w'"


def _serve_files() -> set[str]:
    return set(glob.glob("/dev/shm/graphpart-serve-*"))


@pytest.mark.ray
def test_local_engines_step_through_serve_loops_bit_identically(ray_session):
    from graphpart.engines import DataParallel, Engine
    from graphpart.ir import mlp
    from graphpart.optim import make_optimizer
    from graphpart.params import init_params
    from graphpart.plan.partition import partition

    g = mlp([12, 16, 16, 4], bias=True, loss="cross_entropy")
    p0 = init_params(g, 0, "float64")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((24, 12)), rng.integers(0, 4, 24)
    before = _serve_files()

    def run(make, serving: bool) -> tuple[list[float], dict[str, np.ndarray]]:
        eng = make()
        try:
            if not serving:
                eng.transport.serving = None  # every step a Ray call, as on a cluster
            js = []
            for i in range(3):
                js.append(eng.step(X, y).J)
                if serving:
                    assert eng.transport.serving.running
                    if i == 1:  # a call between steps stops the loops, the next step restarts
                        assert len(eng.stats()) >= 2
                        assert not eng.transport.serving.running
            return js, eng.get_params()
        finally:
            eng.close()

    opt = make_optimizer("adam", lr=1e-2)
    makers = [
        lambda: Engine(partition(g, 2), p0, opt, transport="shm", microbatches=2, max_rows=24),
        lambda: DataParallel(partition(g, 1), p0, opt, replicas=2, max_rows=24),
    ]
    for make in makers:
        (j1, p1), (j2, p2) = run(make, True), run(make, False)
        assert j1 == j2
        for name in p1:
            np.testing.assert_array_equal(p1[name], p2[name], err_msg=name)
    assert _serve_files() <= before  # close() removed every FIFO
