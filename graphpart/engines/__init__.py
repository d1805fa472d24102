"""Engines: one step driver over a schedule, and the transports that move its calls and tensors."""

from graphpart.engines.cluster import start_ray
from graphpart.engines.engine import TRANSPORT_CHOICES, Engine, StepResult, resolve_transport
from graphpart.engines.measure import measured_costs
from graphpart.engines.transports import TRANSPORTS
from workers.backends import DEVICES
from workers.hwm import read_hwm, reset_hwm
from workers.ledger import Ledger

__all__ = [
    "DEVICES",
    "TRANSPORTS",
    "TRANSPORT_CHOICES",
    "Engine",
    "Ledger",
    "StepResult",
    "measured_costs",
    "read_hwm",
    "reset_hwm",
    "resolve_transport",
    "start_ray",
]


# Transitional names for the four engines of before (each is now Engine with a transport).
def LocalEngine(plan, params, optimizer, **kw):  # noqa: ANN001, ANN201, N802
    return Engine(plan, params, optimizer, transport="inprocess", **kw)


def RayEngine(plan, params, optimizer, **kw):  # noqa: ANN001, ANN201, N802
    return Engine(plan, params, optimizer, transport="tasks", **kw)


def PushRayEngine(plan, params, optimizer, **kw):  # noqa: ANN001, ANN201, N802
    return Engine(plan, params, optimizer, transport="push", **kw)


def CompiledRayEngine(plan, params, optimizer, **kw):  # noqa: ANN001, ANN201, N802
    return Engine(plan, params, optimizer, transport="compiled", **kw)
