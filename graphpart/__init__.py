"""graphpart: train neural networks across devices by partitioning their computational graph.

The graph, autodiff and planning API loads with the package; `train`, `load` and `Run`
(graphpart.run.session: train a model, load a run directory, evaluate, predict) load on first
use. They sit on the training loop, which imports the engines and workers/, and every module of
workers/ imports this package: importing them here would make that a cycle.
"""

from importlib import import_module
from typing import Any

from graphpart.api import value_and_grad
from graphpart.autodiff import forward
from graphpart.errors import GraphpartError
from graphpart.ir import Graph, Op, Var, mlp
from graphpart.params import init_params
from graphpart.plan.partition import Plan, partition

_SESSION = ("Run", "load", "train")  # from graphpart.run.session, on first use

__all__ = [
    "Graph",
    "GraphpartError",
    "Op",
    "Plan",
    "Run",
    "Var",
    "forward",
    "init_params",
    "load",
    "mlp",
    "partition",
    "train",
    "value_and_grad",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _SESSION:
        value = getattr(import_module("graphpart.run.session"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphpart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SESSION))
