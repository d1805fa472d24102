"""Zero-bubble schedules (backward split into I and W), their text form, and a validator (pure).

Qi et al. (Zero Bubble Pipeline Parallelism, ICLR 2024) split each backward into I, the input
gradient the previous stage waits for, and W, the weight gradient nobody waits for, so W can
fill the slots where 1F1B idles. The schedules are built by list scheduling on the
simulator's rules (`list_schedule`, in graphpart/plan/schedule.py beside the other generators,
so that `schedule.make` and its KINDS name them; re-exported here): at each moment a stage
runs, of the actions it may start earliest, an I first (it is on the critical path), then an F
while fewer than `limit` micro-batches hold activations (a micro-batch holds them from its F to
its W), then a W. The limit sets memory:

- ZB-H1: K on every stage, 1F1B's peak (its stage 0's), so the pipeline's peak activation
  memory is 1F1B's (later stages hold more than 1F1B's do, never more than its stage 0); with
  equal F, I and W times the bubble is about a third of 1F1B's.
- ZB-H2: 2K - 1 on every stage, up to twice the memory; the start-up bubble fills with
  forwards, and the bubble is close to 0 for M >= 2K - 1.

K=4, M=6, unit F, I and W (1F1B's B takes 2): digits F, a-j I (B in 1F1B), A-J W:

    ZB-H1 (bubble 18.2%)        ZB-H2 (14.3%)               1F1B (33.3%)
    |0123...aA4bB5cCdD.eEfF|    |012345.aAbBcCdDeEfF..|    |0123......aa4bb5cc.dd.ee.ff|
    |.0123.aAbB4cC5dD.eEfF.|    |.01234a5bAcBdCeDfEF..|    |.012....aa3bb4cc5dd.ee.ff..|
    |..012a3bABcC4dD5eEfF..|    |..012a3b4c5dAeBfCDEF.|    |..01..aa2bb3cc4dd5ee.ff....|
    |...0a1b2c3dA.4eB5fCDEF|    |...0a1b2c3d4e5fABCDEF|    |...0aa1bb2cc3dd4ee5ff......|

A heuristic, not the paper's hand-placed schedules. Each is placed for the times it will meet,
not only for equal ones (schedule._listed): an order placed for equal F, I and W idles wherever
they differ, as measured ones do. With equal times ZB-H1's bubble is 0.36-0.38 of 1F1B's at
K=2 (M = 4, 8) and 0.47-0.52 at K=4; over I/F in 0.8-1.5 and W/F in 0.5-1.2, at most 0.69x
at K=2, M=8, where the order placed at equal times reached 1.9x.
The executor runs them (`--schedule zb-h1`, `zb-h2`): each stage worker's I and W are
separate calls (workers/program.py, `backward_input` and `backward_weight`).

Text form: an action is "<stage>"+kind+"<micro-batch>", e.g. "0F3", "1I2", "1W2"; a schedule
file lists them separated by spaces or new lines, each stage's in its order ("#" starts a
comment). Schedules with virtual stages add the chunk ("0F3c1"; graphpart/plan/virtual.py),
whose parser reads this form too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from graphpart.errors import PlanError
from graphpart.plan.schedule import (
    Action,
    Schedule,
    list_schedule,
    make,
    simulate,
    zb_h1,
    zb_h2,
)

__all__ = [
    "SPLIT_KINDS",
    "format_action",
    "format_schedule",
    "list_schedule",
    "make_split",
    "parse_schedule",
    "validate",
    "zb_h1",
    "zb_h2",
]

SPLIT_KINDS = ("zb-h1", "zb-h2")
_TOKEN = re.compile(r"^(\d+)([FBIW])(\d+)$")


def make_split(kind: str, stages: int, microbatches: int) -> Schedule:
    """The zero-bubble schedule named `kind` ("zb-h1" or "zb-h2")."""
    if kind not in SPLIT_KINDS:
        raise PlanError(f"schedule {kind!r} is unknown; use one of {', '.join(SPLIT_KINDS)}")
    return make(kind, stages, microbatches)


# -- text form ------------------------------------------------------------------------------
def format_action(stage: int, action: Action) -> str:
    return f"{stage}{action.kind}{action.mb}"


def format_schedule(schedule: Sequence[Sequence[Action]]) -> str:
    """One line per stage, its actions in order ("0F0 0F1 0I0 ...")."""
    return "\n".join(" ".join(format_action(k, a) for a in acts) for k, acts in enumerate(schedule))


def parse_schedule(text: str) -> Schedule:
    """The schedule `format_schedule` wrote (or a hand-written one): tokens "<stage><kind><mb>"
    in each stage's order; "#" starts a comment. Names the first token it cannot read."""
    per: dict[int, list[Action]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        for tok in line.split("#", 1)[0].split():
            got = _TOKEN.match(tok)
            if got is None:
                raise PlanError(
                    f"line {n}: {tok!r} is not an action; write <stage><kind><micro-batch>, "
                    "kind one of F, B, I, W (e.g. 0F3, 1I2, 1W2)"
                )
            per.setdefault(int(got[1]), []).append(Action(got[2], int(got[3])))
    if not per:
        raise PlanError("the schedule lists no actions")
    missing = [k for k in range(max(per) + 1) if k not in per]
    if missing:
        raise PlanError(f"stage {missing[0]} has no actions; every stage from 0 needs some")
    return [per[k] for k in range(len(per))]


# -- validation -----------------------------------------------------------------------------
def validate(schedule: Sequence[Sequence[Action]], microbatches: int) -> None:
    """Raise PlanError naming the first action that breaks a rule: each stage runs every
    micro-batch's F once and either its B or its I and W once each, F before I (or B) before W,
    and the whole runs without deadlock (simulated)."""
    for k, acts in enumerate(schedule):
        seen: dict[tuple[str, int], int] = {}
        for i, a in enumerate(acts):
            where = f"stage {k}, action {i} ({format_action(k, a)})"
            if a.mb >= microbatches:
                raise PlanError(f"{where}: micro-batch {a.mb}, but there are {microbatches}")
            if (a.kind, a.mb) in seen:
                raise PlanError(f"{where}: runs twice")
            needs = {"F": None, "B": "F", "I": "F", "W": "I"}[a.kind]
            if needs is not None and (needs, a.mb) not in seen:
                raise PlanError(f"{where}: comes before {needs}{a.mb} on its stage")
            if a.kind == "B" and ("I", a.mb) in seen or a.kind == "I" and ("B", a.mb) in seen:
                raise PlanError(f"{where}: micro-batch {a.mb} has both a B and an I")
            seen[(a.kind, a.mb)] = i
        for m in range(microbatches):
            need = ("F", "B") if ("B", m) in seen else ("F", "I", "W")
            gone = [kind for kind in need if (kind, m) not in seen]
            if gone:
                raise PlanError(f"stage {k} never runs {gone[0]}{m}")
    simulate(schedule, 1.0, 2.0)  # deadlocks name the stuck action
