"""graphpart: train neural networks across devices by partitioning their computational graph.

The graph, autodiff and planning API loads with the package; `value_and_grad`
(graphpart.engines.grad: gradients with the engine's executor), and `train`, `load` and `Run`
(graphpart.run.session: train a model, load a run directory, evaluate, predict) load on first
use. They sit on the engines and workers/, and every module of workers/ imports this package:
importing them here would make that a cycle.
"""

from importlib import import_module
from typing import Any

from graphpart.autodiff import forward
from graphpart.errors import GraphpartError
from graphpart.hvp import hvp, jvp
from graphpart.ir import Graph, Op, Var, mlp
from graphpart.params import init_params
from graphpart.plan.partition import Plan, partition

# loaded on first use: name -> the module that defines it
_LAZY = {
    "Run": "graphpart.run.session",
    "load": "graphpart.run.session",
    "train": "graphpart.run.session",
    "value_and_grad": "graphpart.engines.grad",
}

__all__ = [
    "Graph",
    "GraphpartError",
    "Op",
    "Plan",
    "Run",
    "Var",
    "forward",
    "hvp",
    "init_params",
    "jvp",
    "load",
    "mlp",
    "partition",
    "train",
    "value_and_grad",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphpart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
