"""The callback-driven link (``sim.link.Link``) without chunking: who goes first, when a waiter
resumes, and what a cancellation leaves behind."""

from __future__ import annotations

import pytest
import simpy
from moe_offload_lab.sim.eventlog import EventLog
from moe_offload_lab.sim.link import Copy, Link

BW, LAT, SIZE = 1e9, 1e-5, 10_000_000  # one copy takes 10.01 ms
COPY_S = LAT + SIZE / BW


def _link() -> tuple[simpy.Environment, Link, EventLog, list[Copy]]:
    env, log, done = simpy.Environment(), EventLog(), []
    return env, Link(env, BW, LAT, 8, log, done.append), log, done


def _at(env: simpy.Environment, t: float, fn) -> None:  # noqa: ANN001
    def proc():  # noqa: ANN202
        yield env.timeout(t)
        fn()
    env.process(proc())


def test_an_idle_link_starts_the_best_copy_submitted_in_the_same_instant() -> None:
    env, link, _, done = _link()
    prefetch, demand = Copy(1, SIZE, "prefetch", 0, 0), Copy(2, SIZE, "demand", 0, 0)
    link.submit(prefetch)  # one at a time: the kick runs after both are queued
    link.submit(demand)
    env.run()
    assert [c.key for c in done] == [2, 1]
    assert demand.start_s == 0.0 and prefetch.start_s == pytest.approx(COPY_S)


def test_submit_all_starts_at_once_and_matches_submitting_one_by_one() -> None:
    ends = []
    for batched in (False, True):
        env, link, log, done = _link()
        copies = [Copy(1, SIZE, "demand", 0, 0, 0.002), Copy(2, SIZE, "prefetch", 0, 0, 0.002)]
        if batched:
            link.submit_all(copies)
            assert link.running is copies[0]  # started now, not in a later event
            assert link.busy_until == pytest.approx(0.002 + COPY_S)
        else:
            for copy in copies:
                link.submit(copy)
            assert link.running is None
        env.run()
        ends.append(log.to_frame()[["start_s", "end_s", "expert"]].to_numpy().tolist())
        assert [c.key for c in done] == [1, 2]
    assert ends[0] == ends[1]


def test_completion_of_the_running_copy_is_its_own_timeout() -> None:
    env, link, _, _ = _link()
    first, second = Copy(1, SIZE, "demand", 0, 0), Copy(2, SIZE, "demand", 0, 0)
    link.submit_all([first, second])
    seen = []

    def waiter(copy: Copy):  # noqa: ANN202
        event = link.completion(copy)
        yield event
        seen.append((copy.key, copy.state, env.now, link.running))

    assert link.completion(first) is link._timer  # no extra event for the running copy
    env.process(waiter(first))
    env.process(waiter(second))  # queued: a waiter event, triggered by its completion
    env.run()
    assert seen[0][:2] == (1, "done") and seen[0][2] == pytest.approx(COPY_S)
    assert seen[0][3] is second  # the link had already started the next copy
    assert seen[1][:2] == (2, "done") and seen[1][2] == pytest.approx(2 * COPY_S)


def test_cancelling_the_running_copy_counts_partial_bytes_and_moves_on() -> None:
    env, link, log, done = _link()
    first, second = Copy(1, SIZE, "prefetch", 0, 0), Copy(2, SIZE, "prefetch", 0, 0)
    link.submit_all([first, second])
    t = LAT + 0.004  # 4 ms of bytes crossed
    _at(env, t, lambda: link.cancel(first))
    env.run()
    rows = log.to_frame()
    cancelled = rows[rows["expert"] == 1].iloc[0]
    assert str(cancelled["detail"]) == "cancelled"
    assert abs(int(cancelled["bytes"]) - 0.004 * BW) <= 1
    assert cancelled["end_s"] == pytest.approx(t)
    # the next copy starts at the cancellation, and the stale timeout changes nothing
    assert [c.key for c in done] == [2]
    assert second.start_s == pytest.approx(t)
    assert rows[rows["expert"] == 2].iloc[0]["end_s"] == pytest.approx(t + COPY_S)
    assert first.state == "cancelled" and len(rows) == 2


def test_a_copy_waits_for_its_ready_time() -> None:
    env, link, _, done = _link()
    copy = Copy(3, SIZE, "demand", 0, 0, ready_s=0.5)
    link.submit(copy)
    env.run()
    assert done == [copy] and copy.start_s == 0.5
    assert env.now == pytest.approx(0.5 + COPY_S)
