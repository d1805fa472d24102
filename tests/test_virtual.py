"""Schedules with virtual stages (graphpart/plan/virtual.py).

Contract: placements map virtual stages to devices ("interleaved": d, d+K, ...; "v": d and
2K-1-d), chunk c of a device is its c-th virtual stage; the text form "<device><kind><mb>"
(chunk 0) / "...c<chunk>" round-trips and reads the one-chunk form; `simulate` with one chunk
per device is `schedule.simulate`, pays the hop only between devices (the V's turn is free),
and names the stuck action of a deadlock; `validate` names the first action that breaks a
rule; interleaved 1F1B and ZB-V are valid for every K, M (M < K and M not a multiple of K
included); interleaved 1F1B with one chunk is 1F1B, never has a larger bubble than 1F1B, and
for M >= K has bubble (K-1)/v / (M + (K-1)/v) at (v-1)g + 2K-1 micro-batch-chunks in flight;
ZB-V holds at most 2K micro-batch-chunks a device (1F1B's peak) and, at M >= 2K, at most a
quarter of 1F1B's bubble and no more than ZB-H2's; neither is in `schedule.KINDS`.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphpart.errors import PlanError
from graphpart.plan import schedule as sch
from graphpart.plan import virtual as vt
from graphpart.plan import virtual_schedules as vg
from graphpart.plan import virtual_sim as vs
from graphpart.plan import zero_bubble as zb
from graphpart.plan.virtual import ChunkAction as A

GRID_K = [1, 2, 3, 4, 5]
GRID_M = [1, 2, 3, 4, 5, 7, 8, 9]


def test_placements_map_stages_to_devices_and_chunks():
    """Interleaved: device d holds d, d+K, ...; V: d and 2K-1-d; chunk c is the c-th stage."""
    inter = vt.interleaved_placement(3, 2)
    assert inter.owner == (0, 1, 2, 0, 1, 2) and (inter.devices, inter.chunks) == (3, 2)
    assert [inter.stage(1, c) for c in range(2)] == [1, 4] and inter.chunk(4) == 1
    vee = vt.v_placement(3)
    assert vee.owner == (0, 1, 2, 2, 1, 0) and vee.stages_of(0) == (0, 5)
    assert vee.stage(2, 1) == 3 and vee.chunk(3) == 1
    assert vt.placement("v", 3, 2) == vee and vt.placement("interleaved", 3, 2) == inter
    with pytest.raises(PlanError, match="same number"):
        vt.Placement("custom", (0, 0, 1))
    with pytest.raises(PlanError, match="2 chunks per device, not 3"):
        vt.placement("v", 2, 3)
    with pytest.raises(PlanError, match="has chunks 0..1, not chunk 2"):
        inter.stage(0, 2)


def test_text_form_round_trips_and_reads_the_one_chunk_form():
    """format then parse gives the schedule back; "0F3" is chunk 0, "0F3c1" chunk 1."""
    for kind, k, v, m in (("interleaved", 3, 2, 5), ("interleaved", 2, 4, 3), ("zbv", 3, 2, 4)):
        _, s = vg.make(kind, k, v, m)
        assert vt.parse_schedule(vt.format_schedule(s)) == s
    assert str(A("F", 3, 1)) == "F3c1" and str(A("I", 2)) == "I2"
    assert vt.format_action(0, A("W", 2, 1)) == "0W2c1"
    got = vt.parse_schedule("0F0 0F0c1 # device 0\n0B0c1 0B0\n1F0 1B0c0")
    assert got == [[A("F", 0), A("F", 0, 1), A("B", 0, 1), A("B", 0)], [A("F", 0), A("B", 0)]]
    one = sch.zb_h1(3, 4)
    assert vt.parse_schedule(zb.format_schedule(one)) == vt.lift(one)


@pytest.mark.parametrize(
    "text,message",
    [
        ("0F0 0F0x1", r"line 1: '0F0x1' is not an action"),
        ("1F0 1B0", "device 0 has no actions"),
        ("# nothing", "lists no actions"),
    ],
)
def test_bad_text_is_named(text, message):
    """A token that is not an action, a missing device, or no actions at all is refused."""
    with pytest.raises(PlanError, match=message):
        vt.parse_schedule(text)


@pytest.mark.parametrize("kind", sch.KINDS)
@pytest.mark.parametrize("k,m", [(1, 3), (2, 4), (3, 5), (4, 2)])
def test_one_chunk_simulation_is_the_stage_simulation(kind, k, m):
    """With one chunk a device, simulate gives schedule.simulate's events, busy and bubble,
    under uneven per-stage times and a hop."""
    s = sch.make(kind, k, m)
    fwd, bwd = [1.0 + 0.25 * i for i in range(k)], [2.0 + 0.5 * i for i in range(k)]
    want = sch.simulate(s, fwd, bwd, comm=0.3)
    got = vs.simulate(vt.lift(s), vt.interleaved_placement(k, 1), fwd, bwd, comm=0.3)
    assert [(e.stage, e.action.kind, e.action.mb, e.start, e.end) for e in got.events] == [
        (e.stage, e.action.kind, e.action.mb, e.start, e.end) for e in want.events
    ]
    assert (got.makespan, got.busy, got.bubble) == (want.makespan, want.busy, want.bubble)
    assert got.peak_in_flight == want.peak_in_flight


def test_the_hop_is_paid_between_devices_only():
    """One micro-batch on K=2, v=2, F=1, B=2, hop c: interleaved crosses 3 hops each way, the
    V 2 (its turn, stage 1 to 2, stays on device 1)."""
    one = [[A("F", 0), A("F", 0, 1), A("B", 0, 1), A("B", 0)]] * 2
    inter = vs.simulate(one, vt.interleaved_placement(2, 2), 1.0, 2.0, comm=0.5)
    vee = vs.simulate(one, vt.v_placement(2), 1.0, 2.0, comm=0.5)
    assert inter.makespan == pytest.approx(12 + 6 * 0.5)
    assert vee.makespan == pytest.approx(12 + 4 * 0.5)
    assert inter.peak_in_flight == (2, 2)


def test_per_virtual_stage_times_are_used():
    """fwd, bwd, igrad, wgrad take one time per virtual stage; a wrong count is refused."""
    where = vt.v_placement(1)  # one device, stages 0 and 1
    s = [[A("F", 0), A("F", 0, 1), A("I", 0, 1), A("I", 0), A("W", 0), A("W", 0, 1)]]
    t = vs.simulate(s, where, [1.0, 2.0], 0.0, igrad=[3.0, 4.0], wgrad=[5.0, 6.0])
    assert t.makespan == pytest.approx(1 + 2 + 4 + 3 + 5 + 6) and t.bubble == 0.0
    with pytest.raises(PlanError, match="fwd has 3 entries for 2 virtual stages"):
        vs.simulate(s, where, [1.0, 1.0, 1.0], 1.0)


def test_a_deadlock_names_the_stuck_action():
    """Device 0 waits for the backward that device 1 can only run after device 0's next F."""
    text = "0F0 0B0c1 0F0c1 0B0\n1F0 1F0c1 1B0c1 1B0"
    with pytest.raises(PlanError, match=r"device 0 is stuck at 0B0c1 \(step 1, virtual stage 2\)"):
        vs.simulate(vt.parse_schedule(text), vt.interleaved_placement(2, 2), 1.0, 2.0)
    with pytest.raises(PlanError, match="which device 1 never runs"):
        vs.simulate(vt.parse_schedule("0F0 0B0\n1F1 1B1"), vt.interleaved_placement(2, 1), 1, 2)


@pytest.mark.parametrize(
    "text,message",
    [
        ("0F0 0B0\n1F0 1B0", "schedule has 2 devices; placement 'v' has 1"),
        ("0F0 0F0c2", r"device 0, action 1 \(0F0c2\): chunk 2, but device 0 has 2"),
        ("0F1", r"action 0 \(0F1\): micro-batch 1, but there are 1"),
        ("0F0 0F0", r"action 1 \(0F0\): runs twice"),
        ("0F0 0F0c1 0I0c1 0W0 0I0", r"action 3 \(0W0\): comes before 0I0 on its device"),
        ("0F0 0F0c1 0B0c1 0I0c1", r"action 3 \(0I0c1\): micro-batch 0 of chunk 1 has both"),
        ("0F0 0F0c1 0I0c1 0W0c1 0I0", "device 0 never runs 0W0"),
        ("0F0 0F0c1 0B0 0B0c1", "deadlocks: device 0 is stuck at 0B0"),
    ],
)
def test_rule_breakers_are_named(text, message):
    """validate names the first action that breaks a rule (one device, the V of 2 stages)."""
    with pytest.raises(PlanError, match=message):
        vs.validate(vt.parse_schedule(text), vt.v_placement(1), 1)


@pytest.mark.parametrize("k", GRID_K)
@pytest.mark.parametrize("m", GRID_M)
def test_generated_schedules_are_valid(k, m):
    """Interleaved 1F1B (v = 1..4) and ZB-V are valid for every K and M, M < K and M not a
    multiple of K included; 1F1B's bubble bounds both; ZB-V holds at most 2K chunks."""
    base = sch.simulate(sch.one_f_one_b(k, m), 1.0, 2.0)
    for v in (1, 2, 3, 4):
        where, s = vg.make("interleaved", k, v, m)
        vs.validate(s, where, m)
        assert vs.simulate(s, where, 1.0, 2.0).bubble <= base.bubble + 1e-12
    where, s = vg.make("zbv", k, 2, m)
    vs.validate(s, where, m)
    t = vs.simulate(s, where, 1.0, 2.0)
    assert t.bubble <= base.bubble + 1e-12
    assert max(t.peak_in_flight) <= 2 * min(k, m)


@pytest.mark.parametrize("k", GRID_K)
@pytest.mark.parametrize("m", GRID_M)
def test_interleaved_with_one_chunk_is_1f1b(k, m):
    """v = 1 gives 1F1B's lists action for action."""
    s = vg.interleaved_1f1b(k, 1, m)
    assert [[(a.kind, a.mb, a.chunk) for a in acts] for acts in s] == [
        [(a.kind, a.mb, 0) for a in acts] for acts in sch.one_f_one_b(k, m)
    ]


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("m", [4, 5, 6, 8, 10, 13, 16])
@pytest.mark.parametrize("v", [2, 3, 4])
def test_interleaved_divides_the_bubble_by_about_v(k, v, m):
    """For M >= K, F = 1, B = 2: bubble (K-1)/v / (M + (K-1)/v) (Megatron's (K-1)/(vM) of the
    ideal time), at (v-1)g + 2K - 1 micro-batch-chunks on device 0 (g: the first group's
    micro-batches, M over max(1, M // K) rounded up)."""
    if m < k:
        pytest.skip("M < K: one group shorter than K")
    where, s = vg.make("interleaved", k, v, m)
    t = vs.simulate(s, where, 1.0, 2.0)
    assert t.bubble == pytest.approx((k - 1) / v / (m + (k - 1) / v), abs=1e-12)
    g = -(-m // max(1, m // k))
    assert t.peak_in_flight[0] == min((v - 1) * g + 2 * k - 1, v * m)


def test_interleaved_follows_megatron_when_k_divides_m():
    """K=2, v=2, M=4: device 0 warms up with 2(K-1) + (v-1)K = 4 forwards in Megatron's
    order (group 0 through chunk 0 then chunk 1), then alternates, backwards deepest first."""
    s = vg.interleaved_1f1b(2, 2, 4)
    assert (
        vt.format_schedule(s).splitlines()[0].split()
        == (
            "0F0 0F1 0F0c1 0F1c1 0F2 0B0c1 0F3 0B1c1 0F2c1 0B0 0F3c1 0B1 0B2c1 0B3c1 0B2 0B3"
        ).split()
    )


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("m_per_k", [2, 3])
def test_zb_v_is_near_zero_bubble_at_1f1b_memory(k, m_per_k):
    """M >= 2K, F = I = W = 1 per virtual stage (1F1B: F = 1, B = 2 a stage): ZB-V's bubble
    is at most a quarter of 1F1B's and no more than ZB-H2's (which holds up to twice the
    memory), its idle time a device at most K-1 chunk forwards, whatever M, and every device
    holds at most 2K micro-batch-chunks (1F1B's stage 0: K micro-batches of two chunks)."""
    m = m_per_k * k
    where, s = vg.make("zbv", k, 2, m)
    t = vs.simulate(s, where, 1.0, 2.0)
    assert t.bubble <= sch.simulate(sch.one_f_one_b(k, m), 1.0, 2.0).bubble / 4
    assert t.bubble <= sch.simulate(sch.zb_h2(k, m), 1.0, 2.0).bubble + 1e-12
    assert t.bubble * t.makespan <= k - 1 + 1e-9
    assert max(t.peak_in_flight) == 2 * k


def test_zb_v_splits_every_backward():
    """ZB-V runs I and W, never B, on the V placement."""
    where, s = vg.make("zbv", 3, 2, 4)
    assert where.name == "v" and {a.kind for acts in s for a in acts} == {"F", "I", "W"}


def test_make_refuses_what_it_cannot_build():
    """Unknown names, ZB-V with other than 2 chunks and non-positive counts are refused; the
    virtual schedules are not in schedule.KINDS (the executor cannot run them)."""
    with pytest.raises(PlanError, match="use one of interleaved, zbv"):
        vg.make("zb-h1", 2, 2, 2)
    with pytest.raises(PlanError, match="2 chunks per device, not 3"):
        vg.make("zbv", 2, 3, 4)
    with pytest.raises(PlanError, match="microbatches=0 is not positive"):
        vg.make("interleaved", 2, 2, 0)
    with pytest.raises(PlanError, match="first='W': use 'I' or 'F'"):
        vg.chunk_list_schedule(vt.v_placement(2), 2, (4, 4), first="W")
    with pytest.raises(PlanError, match="give one count of 1 or more per device"):
        vg.chunk_list_schedule(vt.v_placement(2), 2, (4,))
    assert not set(vg.VIRTUAL) & set(sch.KINDS)


def test_draw_shows_micro_batches_and_chunks():
    """Two rows a device: micro-batch characters, then each cell's chunk."""
    where, s = vg.make("interleaved", 2, 2, 4)
    lines = vs.draw(vs.simulate(s, where, 1.0, 2.0)).splitlines()
    assert lines[0] == "device 0 |01012.aa3bb2aa3bb.cc.ddccdd|"
    assert lines[1] == "   chunk |00110 11011100100 11 110000|"
    assert lines[-1] == "makespan 27, bubble 11.1%"
    assert len(lines) == 5


def test_chunk_peaks_count_slots_per_chunk():
    """Per chunk, the most micro-batches from F to B or W and from I to W; their sum may
    exceed the device's peak in flight (ZB-V K=4, M=8, device 0: 7 + 3 slots, 8 at once)."""
    acts = vt.parse_schedule("0F0 0F1 0F0c1 0I0c1 0F2 0W0c1 0B0 0I1 0W1")[0]
    assert vs.chunk_peaks(acts, 2) == ((3, 1), (1, 1))
    where, s = vg.make("zbv", 4, 2, 8)
    assert vs.chunk_peaks(s[0], 2) == ((7, 1), (3, 3))
    assert vs.simulate(s, where, 1.0, 2.0).peak_in_flight[0] == 8
    with pytest.raises(PlanError, match="names chunk 1; the device has chunks 0..0"):
        vs.chunk_peaks([A("F", 0, 1)], 1)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4),
    v=st.integers(1, 3),
    m=st.integers(1, 6),
    zbv=st.booleans(),
    times=st.lists(st.floats(0.1, 3.0), min_size=4, max_size=4),
    comm=st.floats(0.0, 1.0),
)
def test_simulation_honours_every_rule(k, v, m, zbv, times, comm):
    """Under any times and hop: a device runs its list in order without overlap, F of s starts
    after F of s-1 ends (plus the hop across devices), B/I of s after B/I of s+1 (the last
    stage after its own F), W after its I."""
    kind, v = ("zbv", 2) if zbv else ("interleaved", v)
    where, s = vg.make(kind, k, v, m)
    V = where.stages
    fwd = [times[0] * (1 + s_ % 2) for s_ in range(V)]
    t = vs.simulate(s, where, fwd, times[1], comm, igrad=times[2], wgrad=times[3])
    end, start = {}, {}
    for d in range(k):
        evs = [e for e in t.events if e.stage == d]
        assert [e.action for e in evs] == s[d]
        assert all(a.end <= b.start + 1e-12 for a, b in zip(evs, evs[1:], strict=False))
        for e in evs:
            key = (e.action.kind, where.stage(d, e.action.chunk), e.action.mb)
            start[key], end[key] = e.start, e.end
    hop = [[0.0 if where.owner[a] == where.owner[b] else comm for b in range(V)] for a in range(V)]
    for (kind_, st_, mb), t0 in start.items():
        if kind_ == "F" and st_ > 0:
            assert t0 >= end["F", st_ - 1, mb] + hop[st_ - 1][st_] - 1e-9
        elif kind_ in "BI":
            if st_ == V - 1:
                assert t0 >= end["F", st_, mb] - 1e-9
            else:
                up = end.get(("I", st_ + 1, mb), end.get(("B", st_ + 1, mb)))
                assert t0 >= up + hop[st_ + 1][st_] - 1e-9
        elif kind_ == "W":
            assert t0 >= end["I", st_, mb] - 1e-9


def test_a_whole_schedule_file_round_trips_with_its_placement():
    """dump writes "placement <name> <chunks>" and the actions; load reads them back (comments
    and blank lines before the header allowed); a missing or unknown header is refused."""
    for kind, k, v, m in (("interleaved", 3, 2, 4), ("interleaved", 2, 3, 5), ("zbv", 2, 2, 3)):
        where, s = vg.make(kind, k, v, m)
        assert vt.load(vt.dump(where, s)) == (where, s)
    where, s = vg.make("zbv", 2, 2, 2)
    assert vt.load("# mine\n\nplacement v  # the V\n" + vt.format_schedule(s)) == (where, s)
    for text, message in (
        ("0F0 0B0", "the first line is '0F0 0B0'"),
        ("placement interleaved\n0F0 0B0", "needs its chunks a device"),
        ("placement w 2\n0F0 0B0", "placement 'w' is unknown"),
        ("placement v 3\n0F0 0B0", "2 chunks per device, not 3"),
        ("# nothing", "the file lists nothing"),
    ):
        with pytest.raises(PlanError, match=message):
            vt.load(text)
    with pytest.raises(PlanError, match="no name to write"):
        vt.dump(vt.Placement("mine", (0, 1, 1, 0)), s)


def test_pipeline_step_adds_each_devices_finish():
    """The step is the latest of each device's last action plus its finish; with no finish it
    is the simulator's makespan."""
    fwd, bwd = [1.0, 1.0, 1.5, 1.0], [2.0, 2.0, 3.0, 2.0]
    step, tl = vg.pipeline_step("interleaved", 2, 4, fwd, bwd, [0.0, 0.0], 0.1)
    where, s = vg.make("interleaved", 2, 2, 4)
    assert step == tl.makespan == vs.simulate(s, where, fwd, bwd, 0.1).makespan
    ends = [max(e.end for e in tl.events if e.stage == d) for d in range(2)]
    step, _ = vg.pipeline_step("interleaved", 2, 4, fwd, bwd, [5.0, 0.5], 0.1)
    assert step == max(ends[0] + 5.0, ends[1] + 0.5)
    step, tl = vg.pipeline_step("zbv", 2, 4, [1.0] * 4, [2.0] * 4, [0.0, 0.0], 0.0)
    assert step == tl.makespan == 25.0
