"""Contract of compare's 2-D strategy h (graphpart/tools/compare/grid.py, axes.py), pure.

grid_shape(devices, layers, batch, M) picks R >= 2 replicas of a K >= 2-stage pipeline for 4
devices or more (None below): the most devices R x K within `devices`, then the squarest grid,
then more replicas than stages; K at most the layers, R at most the rows; each replica's
micro-batches as many rows as the pipelines' (ceil(M / R)). auto_grid_shape takes plan
--auto's best-ranked 2-d candidate that fits. make_strategies adds h from 4 devices. The
verdict counts a row with stages > 1 and data_parallel > 1 as the family "2-D"; axes_line
says, from the rows' own speeds, peaks and bytes sent, whether 2-D beats pipeline only and
data parallel only (faster by more than TIE, or it fits where that axis does not).
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from graphpart.run.config import load_config
from graphpart.tools.compare.axes import axes_line
from graphpart.tools.compare.grid import GridShape, auto_grid_shape, grid_shape
from graphpart.tools.compare.strategies import make_strategies
from graphpart.tools.compare.verdict import family, setup_name, verdict


@pytest.mark.parametrize(
    "devices, layers, batch, m, want",
    [
        (3, 4, 32, 8, None),  # below 4 devices: no grid
        (4, 4, 32, 8, (2, 2, 4)),
        (5, 4, 32, 8, (2, 2, 4)),  # one device left over
        (6, 4, 32, 12, (3, 2, 4)),  # 3x2 before 2x3: more replicas
        (8, 4, 32, 16, (4, 2, 4)),  # 8 devices: 4x2 and 2x4 equally square, replicas first
        (9, 4, 32, 3, (3, 3, 1)),  # the squarest of 9
        (8, 2, 32, 16, (4, 2, 4)),  # two layers: at most two stages
        (4, 1, 32, 8, None),  # one layer: no pipeline
        (4, 4, 1, 1, None),  # one row: no second replica
        (4, 4, 6, 8, (2, 2, 3)),  # micro-batches at most a replica's 3 rows
    ],
)
def test_grid_shape_rule(devices, layers, batch, m, want):
    """The rule's (replicas, stages, micro-batches per replica) for a few machines."""
    got = grid_shape(devices, layers, batch, m)
    assert (None if got is None else (got.replicas, got.stages, got.microbatches)) == want
    if got is not None:
        assert got.devices <= devices and got.source == "rule"


def _cand(kind: str, fits: bool = True, **kw):
    base = dict(stages=2, replicas=2, microbatches=4, schedule="gpipe", recompute=True)
    return SimpleNamespace(kind=kind, fits=fits, **{**base, **kw})


def test_auto_grid_shape_is_the_best_fitting_2d_candidate():
    """The first (best-ranked) candidate of kind 2-d that fits, with its schedule, M and
    recomputation; None without one."""
    ranked = [
        _cand("pipeline", stages=4, replicas=1),
        _cand("2-d", fits=False, replicas=4),
        _cand("2-d", replicas=2, stages=3, microbatches=2),
        _cand("2-d", replicas=3),
    ]
    assert auto_grid_shape(ranked) == GridShape(2, 3, 2, "gpipe", True, "plan --auto")
    assert auto_grid_shape(ranked[:2]) is None


def test_make_strategies_adds_h_from_four_devices(tmp_path):
    """h is strategy 8 at 4 devices (2 replicas x 2 stages, 1F1B, a transport replicas run
    on), and absent at 2 devices."""
    cfg = load_config(None, {"model.hidden": [16, 16, 16], "train.batch_size": 32})
    got = {s.key: s for s in make_strategies(cfg, 4, 8, "linear", n_layers=4)}
    assert list(got) == list("abcdefgh")
    h = got["h"]
    assert h.devices == 4 and h.name == "2-D"
    assert h.overrides["pipeline.stages"] == 2 and h.overrides["pipeline.data_parallel"] == 2
    assert h.overrides["pipeline.microbatches"] == 4 and h.overrides["pipeline.schedule"] == "1f1b"
    assert h.overrides["pipeline.transport"] in ("auto", "shm", "push")
    assert "h" not in {s.key for s in make_strategies(cfg, 2, 4, "linear", n_layers=4)}


def _row(key, stages=1, replicas=1, sps=1000.0, peak=100, sent=10, status="ran", proj=None):
    return {
        "key": key,
        "status": status,
        "devices": stages * replicas,
        "config": {
            "pipeline.stages": stages,
            "pipeline.data_parallel": replicas,
            "pipeline.microbatches": 4,
            "pipeline.schedule": "1f1b",
        },
        "samples_per_s": sps if status == "ran" else None,
        "projected_samples_per_s": proj,
        "predicted_peak": peak,
        "measured_peak": peak * 2 if status == "ran" else None,
        "comm_bytes_per_step": sent,
        "problem": None,
    }


def test_2d_rows_are_their_own_family_and_can_win_the_verdict():
    """A 2-D row is family "2-D", named by its grid; fastest by more than the tie, the
    verdict says to replicate a pipeline, against the fastest of either axis alone."""
    h = _row("h", stages=2, replicas=2, sps=3000.0)
    assert family(h) == "2-D"
    assert setup_name(h) == "2-D, 2 replicas x 2-stage 1F1B, M=4 (h)"
    rows = [_row("a", sps=1000.0), _row("e", stages=4, sps=2000.0), h]
    v = verdict(rows, devices=4, cores=8, budget=None)
    assert v.answer == "2-D" and v.pick == "h" and v.ratio == pytest.approx(1.5)
    assert v.headline.startswith("Replicate a pipeline: 2-D, 2 replicas x 2-stage")
    assert "1.50x the speed of 1F1B, K=4, M=4 (e)" in v.headline


def test_axes_line_reads_its_verdict_from_the_figures():
    """h beats an axis when faster by more than TIE (the ratio printed is its speed over the
    axis's), ties within it, loses otherwise, and beats an axis that does not fit; the
    figures are the rows' own; projected speeds where the cores are fewer than devices."""
    h = _row("h", stages=2, replicas=2, sps=3000.0, peak=60, sent=30)
    e = _row("e", stages=4, sps=2000.0, peak=40, sent=20)
    g = _row("g", stages=4, sps=1500.0, peak=30, sent=20)
    f = _row("f", replicas=4, sps=2900.0, peak=90, sent=40)
    rows = {r["key"]: r for r in (h, e, g, f)}
    line = axes_line(rows, devices=4, cores=8)
    assert line is not None and "samples/s measured" in line
    assert "1F1B, K=4, M=4 (e): 2,000 samples/s" in line  # the fastest pipeline, not g
    assert "h runs 1.50x its speed with 1.50x its memory per device and 1.50x its bytes" in line
    assert "h runs 1.03x its speed" in line and "a tie" in line
    assert line.endswith("So 2-D beats pipeline only but not data parallel only here.")

    f_slow = {**f, "samples_per_s": 1000.0}
    line = axes_line({**rows, "f": f_slow}, devices=4, cores=8)
    assert line.endswith("So 2-D beats both axes alone here.")
    f_over = _row("f", replicas=4, peak=900, status="does not fit")
    line = axes_line({**rows, "f": f_over}, devices=4, cores=8)
    assert "does not fit" in line and line.endswith("beats both axes alone here.")
    fast = {k: {**r, "samples_per_s": 9000.0} for k, r in rows.items() if k != "h"}
    assert axes_line({**fast, "h": h}, devices=4, cores=8).endswith(
        "beats neither axis alone here."
    )

    h_p = {**h, "projected_samples_per_s": 4000.0}
    e_p = {**e, "projected_samples_per_s": 5000.0}
    line = axes_line({**rows, "h": h_p, "e": e_p}, devices=4, cores=2)
    assert "projected with a device each" in line
    assert re.search(r"h runs 0\.80x its speed .*: it beats h", line)

    assert axes_line({"e": e}, devices=4, cores=8) is None
    over = axes_line({**rows, "h": {**h, "status": "does not fit"}}, devices=4, cores=8)
    assert over.startswith("2-D (h) does not fit") and "beats neither" in over
