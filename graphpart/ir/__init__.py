"""The graph IR: Var and Op records, Graph, the MLP builder and DOT export."""

from graphpart.ir.dot import to_dot, write_graph
from graphpart.ir.graph import BATCH, Graph, Op, Var
from graphpart.ir.mlp import mlp

__all__ = ["BATCH", "Graph", "Op", "Var", "mlp", "to_dot", "write_graph"]
