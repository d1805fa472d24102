"""The transports, by the name a user gives `pipeline.transport`.

Adding one: a module here with a class that implements `graphpart.engines.transport.Transport`,
and one entry below.
"""

from __future__ import annotations

from graphpart.engines.transport import Transport
from graphpart.engines.transports.compiled import Compiled
from graphpart.engines.transports.inprocess import InProcess
from graphpart.engines.transports.push import Push
from graphpart.engines.transports.shm import Shm
from graphpart.engines.transports.tasks import Tasks

TRANSPORTS: dict[str, type[Transport]] = {
    "inprocess": InProcess,  # every stage in this process (no Ray)
    "tasks": Tasks,  # Ray: a task per action, object references through the driver
    "push": Push,  # Ray: a call per stage a step, stages push tensors to each other
    "compiled": Compiled,  # Ray: a Compiled Graph over shared-memory channels
    "shm": Shm,  # Ray: push, with shared-memory channels between neighbours on one node
}
RAY_DEFAULT = "shm"  # what `auto` picks for two or more stages (docs/benchmarks.md says why)

__all__ = [
    "RAY_DEFAULT",
    "TRANSPORTS",
    "Compiled",
    "InProcess",
    "Push",
    "Shm",
    "Tasks",
    "Transport",
]
