"""The transports, by the name a user gives `pipeline.transport`.

Adding one: a module here with a class that implements `graphpart.engines.transport.Transport`,
and one entry below. `tasks` and `compiled` were removed (measured slower or erratic:
docs/architecture.md, "Transports").
"""

from __future__ import annotations

from graphpart.engines.transport import Transport
from graphpart.engines.transports.inprocess import InProcess
from graphpart.engines.transports.push import Push
from graphpart.engines.transports.shm import Shm

TRANSPORTS: dict[str, type[Transport]] = {
    "inprocess": InProcess,  # every stage in this process (no Ray)
    "push": Push,  # Ray: a call per stage a step, stages push tensors to each other
    "shm": Shm,  # Ray: push, with shared-memory channels between neighbours on one node
}
RAY_DEFAULT = "shm"  # what `auto` picks for two or more stages (docs/benchmarks.md says why)
# names a user may still give, and why they went (the message of the ConfigError that refuses them)
REMOVED = {
    "tasks": "the driver was on every hop (2MK + K submissions a step): slower than push",
    "compiled": "Ray's compiled-graph actors spin a core while they wait: erratic steps",
}


def removed_note(name: str) -> str:
    """'' for a name that never was a transport, else '; NAME was removed (why)'."""
    return f"; {name} was removed ({REMOVED[name]})" if name in REMOVED else ""


__all__ = [
    "RAY_DEFAULT",
    "REMOVED",
    "TRANSPORTS",
    "InProcess",
    "Push",
    "Shm",
    "Transport",
    "removed_note",
]
