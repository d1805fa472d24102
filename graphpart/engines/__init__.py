"""Engines: one step driver over a schedule, and the transports that move its calls and tensors."""

from graphpart.engines.compiled import CompiledRayEngine
from graphpart.engines.engine import Engine, LocalEngine
from graphpart.engines.push import PushRayEngine
from graphpart.engines.tasks import RayEngine, start_ray
from workers.hwm import read_hwm, reset_hwm
from workers.ledger import Ledger

__all__ = [
    "CompiledRayEngine",
    "Engine",
    "Ledger",
    "LocalEngine",
    "PushRayEngine",
    "RayEngine",
    "read_hwm",
    "reset_hwm",
    "start_ray",
]
