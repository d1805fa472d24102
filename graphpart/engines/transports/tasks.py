"""Transport `tasks`: the driver submits every action as an actor task; tensors travel as
object references it passes from one stage's task to the next.

Ray runs one caller's tasks on an actor in submission order, each once its arguments are
ready, so submitting in the wiring's order makes every stage run exactly its schedule. The
driver is on every hop and makes 2MK + K submissions a step.
"""

from __future__ import annotations

import numpy as np

from graphpart.engines.transport import walk_step
from graphpart.engines.transports.actors import RayActors
from graphpart.engines.wiring import StepFeed, StepWiring
from workers.stats import Finish


class Tasks(RayActors):
    """A task per action, object references between stages."""

    name = "tasks"

    def run_step(self, wiring: StepWiring, feed: StepFeed[np.ndarray]) -> list[Finish]:
        return walk_step(self, wiring, feed)
