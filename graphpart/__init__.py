"""graphpart: train neural networks across devices by partitioning their computational graph."""

from graphpart.api import value_and_grad
from graphpart.autodiff import forward
from graphpart.errors import GraphpartError
from graphpart.ir import Graph, Op, Var, mlp
from graphpart.params import init_params
from graphpart.plan.partition import Plan, partition

__all__ = [
    "Graph",
    "GraphpartError",
    "Op",
    "Plan",
    "Var",
    "forward",
    "init_params",
    "mlp",
    "partition",
    "value_and_grad",
]
__version__ = "0.1.0"
