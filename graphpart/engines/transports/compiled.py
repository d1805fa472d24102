"""Transport `compiled`: steady-state steps as a Ray Compiled Graph (boundaries over channels).

The first step of a (schedule, micro-batches, minibatch rows, dtypes, shapes) key runs as
ordinary tasks (transport `tasks`); the second compiles a graph for the key and every later
step of that key executes it, so boundary activations and gradients move actor to actor over
shared-memory channels. A step of another key falls back to tasks (the compiled graph stays,
idle); a key seen twice in a row replaces the graph. The graph is built by the same walk
(`wiring.drive`) the tasks transport submits, with `bind` for `remote`, so results are
bit-identical: the same calls with the same arguments in the same per-stage order.

    input:   (scale, update, x_0 .. x_{M-1}, y_0 .. y_{M-1})
    F(0,m)   = call("forward", m, x_m, None, scale)
    F(k,m)   = call("forward", m, F(k-1,m), y_m if k == K-1 else None, scale)
    B(K-1,m) = call("backward", m, F(K-1,m), scale)     F(K-1,m) is None: the last stage's g
    B(k,m)   = call("backward", m, B(k+1,m), scale)
    finish_k = call("finish", update)
    outputs: B(0,0) .. B(0,M-1) (None; they carry any error), finish_0 .. finish_{K-1}

Per-actor order. Ray chains the COMPUTE operations of one actor in `bind` order and sorts
READ/COMPUTE/WRITE by task index, so binding in the wiring's order makes every actor run its
schedule. `_compile` does not rely on that: it reads the execution schedule Ray built and
refuses the graph (fallback to tasks) unless each actor's COMPUTEs are exactly its stage's
actions then `finish`, and each task's WRITE comes before the next COMPUTE on that actor (the
result is a view of a worker buffer; writing serialises a copy into the channel before the
buffer can be reused). Received arrays are zero-copy views of channel memory; the worker
copies them into its own buffers on entry and keeps no reference.

Teardown. Every task reads an attribute of the graph's input (`scale` or `update`), so each
actor's idle loop waits on the driver's input channel, which teardown closes; an actor idling
on an actor-to-actor channel alone was seen not to wake on teardown (Ray 2.60, once the
channel's buffers had wrapped). `close` tears down with kill_actors=True and a short timeout.

Waiting. A process blocked reading a channel spins its core (Ray 2.60), so the driver sleeps
`presleep` of the recent compiled step time before it waits for the results: otherwise it
takes a whole core from the stages on a small machine. The stage actors spin likewise while
they wait for a boundary tensor, and while the graph idles between steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphpart.engines.cluster import first_line
from graphpart.engines.transports.tasks import Tasks
from graphpart.engines.wiring import StepFeed, StepWiring, drive
from graphpart.errors import StageFailure
from graphpart.params import params_dtype
from workers.stage import WorkerSpec
from workers.stats import Finish

SCALE, UPDATE, FIRST_X = 0, 1, 2  # positions in the graph's input
Expected = dict[int, list[tuple[int, str]]]  # stage -> (bind index, action) in order


_KIND = {"forward": "F", "backward": "B", "backward_input": "I", "backward_weight": "W"}


class Compiled(Tasks):
    """Tasks for the first step of a shape, a Ray Compiled Graph for the steps after."""

    name = "compiled"
    virtual_stages = False  # its graph binds one actor a stage: virtual stages are refused
    compile_after = 2  # compile on the n-th consecutive step of the same key
    presleep = 0.8  # sleep this fraction of the recent compiled step time before waiting on it
    teardown_timeout_s = 60.0

    def __init__(
        self, address: str = "", num_cpus: int | None = None, step_timeout_s: float = 0.0
    ) -> None:
        super().__init__(address, num_cpus, step_timeout_s)
        self._dag: Any = None
        self._dag_key: tuple | None = None
        self._seen_key: tuple | None = None
        self._seen = 0
        self._dag_runs = 0
        self._step_estimate: float | None = None
        self._row_bytes = 0  # the widest boundary tensor's bytes per row
        self.compile_errors: dict[tuple, str] = {}
        self.compiled_steps = 0
        self.compiles = 0

    def start(self, specs: Sequence[WorkerSpec]) -> None:
        itemsize = max([params_dtype(s.params).itemsize for s in specs] + [4])
        widths = [
            int(np.prod([d for d in s.graph.var(s.output).shape if d != "B"]))
            for s in specs
            if s.output is not None
        ]
        self._row_bytes = max(widths + [1]) * itemsize
        super().start(specs)

    # -- stepping -------------------------------------------------------------------------------
    def run_step(self, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]:
        x0, y0 = np.asarray(feed.xs[0]), np.asarray(feed.ys[0])
        key = (
            wiring.schedule,
            wiring.microbatches,
            tuple(len(x) for x in feed.xs),
            x0.dtype.str,
            y0.dtype.str,
            x0.shape[1:],
            y0.shape[1:],
        )
        if self._dag is not None and self._dag_key == key:
            return self._compiled_step(wiring, feed)
        self._seen = self._seen + 1 if key == self._seen_key else 1
        self._seen_key = key
        if self._seen >= self.compile_after and key not in self.compile_errors:
            if self._compile(key, wiring, feed):
                return self._compiled_step(wiring, feed)
        return super().run_step(wiring, feed)

    @staticmethod
    def _inputs(feed: StepFeed[np.ndarray]) -> list[Any]:
        return [feed.scale, bool(feed.update), *feed.xs, *feed.ys]

    def _compiled_step(self, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]:
        import ray

        self._step_id += 1
        deadline = self.deadline_s()
        if self._dag_runs == 0:  # a graph's first run includes its start-up
            deadline = max(deadline, self.first_deadline_s)
        t0 = time.perf_counter()
        try:
            refs = self._dag.execute(*self._inputs(feed))
            if self._step_estimate is not None and self.presleep > 0:
                # a driver blocked on a channel spins a core (Ray 2.60): sleep most of the step
                time.sleep(
                    max(0.0, self.presleep * self._step_estimate - (time.perf_counter() - t0))
                )
            out = ray.get(refs, timeout=max(0.0, t0 + deadline - time.perf_counter()))
        except ray.exceptions.RayTaskError as e:  # a stage raised: the graph is still usable
            raise StageFailure(first_line(e)) from None
        except Exception as e:  # noqa: BLE001 - channel timeout, dead actor: the graph is gone
            if time.perf_counter() - t0 >= deadline:  # a stall: name who holds it up
                stopped = self.stopped()
                self._discard_broken()
                raise StageFailure(
                    self.stall_message(
                        stopped,
                        "stopped answering",
                        self._step_id,
                        deadline,
                        time.perf_counter() - t0,
                        bool(stopped),
                    )
                ) from None
            self._discard_broken()
            raise StageFailure(
                f"compiled pipeline step failed ({type(e).__name__}: "
                f"{first_line(e)}); the stage actors were stopped"
            ) from None
        took = time.perf_counter() - t0
        self.timed(t0)
        if self._dag_runs > 0:  # the first run of a graph includes its start-up
            est = self._step_estimate
            self._step_estimate = took if est is None else 0.7 * est + 0.3 * took
        self._dag_runs += 1
        self.compiled_steps += 1
        return out[-wiring.k :]

    # -- building the graph ---------------------------------------------------------------------
    def _compile(self, key: tuple, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> bool:
        """Build, compile and verify the graph for `key`; False (reason recorded) if not."""
        self._teardown()
        try:
            dag, expected = self._build(wiring)
            inputs = self._inputs(feed)
            cdag = dag.experimental_compile(
                _buffer_size_bytes=self._buffer_bytes(feed, inputs), _max_inflight_executions=1
            )
        except Exception as e:  # noqa: BLE001 - anything Ray refuses: stay on ordinary tasks
            self.compile_errors[key] = f"{type(e).__name__}: {e}"
            return False
        self._dag, self._dag_key = cdag, key
        self._dag_runs, self._step_estimate = 0, None
        problem = self._check_schedule(cdag, expected)
        if problem:
            self.compile_errors[key] = problem
            self._teardown()
            return False
        self.compiles += 1
        return True

    def _build(self, wiring: StepWiring) -> tuple[Any, Expected]:
        """The step's DAG (the wiring's walk, bound), and per stage the order it must run."""
        from ray.dag import InputNode, MultiOutputNode

        M = wiring.microbatches
        expected: Expected = {k: [] for k in range(wiring.k)}

        def bind(k: int, method: str, *args: Any) -> Any:
            node = self.actors[k].call.bind(method, *args)
            label = "finish" if method == "finish" else f"{_KIND.get(method, method)}{args[0]}"
            expected[k].append((node._get_bind_index(), label))
            return node

        with InputNode() as inp:
            feed = StepFeed(
                xs=[inp[FIRST_X + m] for m in range(M)],
                ys=[inp[FIRST_X + M + m] for m in range(M)],
                scale=inp[SCALE],
                update=inp[UPDATE],
            )
            dag = MultiOutputNode(drive(wiring, feed, bind))
        return dag, expected

    def _buffer_bytes(self, feed: StepFeed[np.ndarray], inputs: list[Any]) -> int:
        """Channel size: the larger of the input tuple and one micro-batch's boundary tensor."""
        rows = max(len(x) for x in feed.xs)
        data = sum(int(getattr(v, "nbytes", 64)) for v in inputs)
        return max(rows * self._row_bytes, data) + (64 << 10)

    def _check_schedule(self, cdag: Any, expected: dict[int, list[tuple[int, str]]]) -> str:
        """'' if Ray's per-actor schedule runs each stage's actions in order, else why not."""
        try:
            from ray.dag.dag_node_operation import _DAGNodeOperationType as Op

            schedules = cdag.actor_to_execution_schedule
            tasks = cdag.actor_to_executable_tasks
        except (ImportError, AttributeError) as e:
            return f"cannot read Ray's execution schedule to verify the order ({e})"
        stage_of = {a._actor_id: k for k, a in enumerate(self.actors)}
        seen = set()
        for actor, ops in schedules.items():
            k = stage_of.get(actor._actor_id)
            if k is None:
                return f"Ray scheduled tasks on an actor that is not a stage ({actor})"
            seen.add(k)
            by_idx = tasks[actor]
            computes = [op.exec_task_idx for op in ops if op.type == Op.COMPUTE]
            got = [by_idx[i].bind_index for i in computes]
            want = [b for b, _ in expected[k]]
            if got != want:
                names = dict(expected[k])
                return (
                    f"stage {k}: Ray's order {[names.get(b, b) for b in got]} is not the "
                    f"schedule's {[a for _, a in expected[k]]}"
                )
            pos = {(op.exec_task_idx, op.type): i for i, op in enumerate(ops)}
            for i, j in zip(computes, computes[1:], strict=False):
                if pos[(i, Op.WRITE)] > pos[(j, Op.COMPUTE)]:
                    return (
                        f"stage {k}: the result of {dict(expected[k])[by_idx[i].bind_index]} "
                        "would be written after the next action ran"
                    )
        if seen != set(range(len(self.actors))):
            return f"Ray scheduled stages {sorted(seen)}, not all {len(self.actors)}"
        return ""

    # -- teardown -------------------------------------------------------------------------------
    def _teardown(self) -> None:
        """Stop the compiled graph, keeping the actors (bounded: kill them if it hangs)."""
        dag, self._dag, self._dag_key = self._dag, None, None
        if dag is None:
            return
        t = threading.Thread(target=dag.teardown, daemon=True)
        t.start()
        t.join(self.teardown_timeout_s)
        if t.is_alive():
            self.kill_actors()
            _kill_proxy(dag)
            raise StageFailure(
                f"compiled graph teardown did not finish in "
                f"{self.teardown_timeout_s:.0f} s; the stage actors were stopped"
            )
        _kill_proxy(dag)

    def _discard_broken(self) -> None:
        """Stop the actors first: a teardown waits on a stopped or wedged one (35 s seen)."""
        dag, self._dag, self._dag_key = self._dag, None, None
        self.kill_actors()
        if dag is not None:
            _kill_teardown(dag)

    def close(self) -> None:
        """Tear the graph down, stop the actors (their loops end, so the graph's monitor
        thread returns from its wait), join that thread, then stop Ray: a thread still inside
        ray.get when Ray shuts down crashed the process (SIGSEGV after Ctrl-C, 2 of 12 tries)."""
        dag, self._dag, self._dag_key = self._dag, None, None
        if dag is not None:
            _kill_teardown(dag)
            self.kill_actors()
            _join_monitor(dag)
        super().close()


def _kill_teardown(dag: Any, timeout_s: int = 5) -> None:
    """`dag.teardown(kill_actors=True)`, waiting at most `timeout_s` per actor before killing."""
    from ray.dag import DAGContext

    ctx = DAGContext.get_current()
    old, ctx.teardown_timeout = ctx.teardown_timeout, timeout_s
    try:
        dag.teardown(kill_actors=True)
    except Exception:  # noqa: BLE001 - actors already dead: nothing left to stop
        pass
    finally:
        ctx.teardown_timeout = old
        # The graph and its unread result refs clean up in __del__ unless the graph says it is
        # torn down; a teardown that raised left that unsaid, and their __del__, run when the
        # last reference went (after Ctrl-C: once the traceback was dropped, after
        # ray.shutdown), touched the closed channels and crashed the process (SIGSEGV).
        dag._is_teardown = True
    _kill_proxy(dag)


def _join_monitor(dag: Any, timeout_s: float = 10.0) -> None:
    """Wait for the compiled graph's monitor thread (it waits on the actors' loops) to end."""
    monitor = getattr(dag, "_monitor", None)
    if monitor is not None and monitor.is_alive():
        monitor.join(timeout_s)


def _kill_proxy(dag: Any) -> None:
    """Stop the driver-side helper actor Ray starts for each compiled graph."""
    import ray

    proxy = getattr(dag, "_proxy_actor", None)
    if proxy is not None:
        try:
            ray.kill(proxy)
        except Exception:  # noqa: BLE001 - already gone
            pass
