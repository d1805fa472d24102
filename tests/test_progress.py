"""A run's progress (graphpart.run.progress).

Contract: the steady throughput is the median step rate past the first WARM_STEPS steps (all of
them when there are no more), the mean is samples over training seconds, the first steps' wall
time is counted apart; after a failure, `restart` goes back to the checkpoint's epoch and step
and forgets the best losses, but keeps what this process measured.
"""

from __future__ import annotations

import math

from graphpart.run.progress import WARM_STEPS, Progress


def test_throughput_leaves_out_the_first_steps():
    st = Progress(samples=100, train_time=4.0)
    for seconds in (1.0, 1.0, 1.0, 0.5, 0.25, 0.5):
        st.timed_step(10, seconds)
    got = st.throughput()
    assert WARM_STEPS == 3 and got["first_steps"] == 3 and got["first_steps_s"] == 3.0
    assert got["samples_per_s"] == 20.0  # median of 20, 40, 20
    assert got["samples_per_s_mean"] == 25.0


def test_few_steps_and_no_time():
    st = Progress()
    assert st.throughput()["samples_per_s"] is None
    assert st.throughput()["samples_per_s_mean"] is None
    st.timed_step(8, 0.0)
    assert st.throughput()["samples_per_s"] == math.inf


def test_restart_keeps_the_measurements_not_the_place():
    st = Progress(epoch=3, step=30, samples=300, train_time=2.0, best_loss=0.1, first_loss=2.0)
    st.timed_step(10, 0.5)
    again = st.restart(2, 20)
    assert (again.epoch, again.step, again.samples, again.train_time) == (2, 20, 300, 2.0)
    assert again.rates is st.rates and again.first_steps_s == 0.5
    assert again.best_loss == math.inf and again.first_loss is None and again.metrics == {}
