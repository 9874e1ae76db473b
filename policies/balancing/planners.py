"""Replication planners: given a per-expert load vector, fill the redundant slots.

- :func:`greedy_replicate` (PROBE-style): repeatedly relieve the most loaded rank by copying one
  of its hottest experts onto the least loaded rank with a free slot, water-filling the expert's
  tokens over its holders; stop when no copy lowers the maximum.
- :func:`replicate_heaviest` (EPLB-style): give extra copies to the experts with the highest
  load per copy, then place each copy on the least loaded rank that has a free slot.

Both work on float loads in O(ranks x R x candidates) small Python steps (no per-token work).
"""

from __future__ import annotations

import numpy as np
from moe_offload_lab.policies.balancing.split import balance_shares, waterfill


def greedy_replicate(load: np.ndarray, home: np.ndarray, ranks: int, slots: int,
                     candidates: int = 3, targets: int = 2,
                     min_gain: float = 1e-3) -> np.ndarray:
    """PROBE-style greedy plan: ``[ranks, slots]`` expert ids, -1 empty.

    ``load`` [E] predicted token-expert pairs, ``home`` [E] primary ranks. Each round tries the
    ``candidates`` heaviest expert shares of the hottest rank against the ``targets`` lightest
    ranks with a free slot, scoring a copy by water-filling that expert over its holders; the
    copy that lowers the maximum rank load most (in steps of ``min_gain`` pairs; ties broken by
    the sum of squared rank loads, so two equally hot ranks are relieved one after the other) is
    kept and
    all replicated experts are re-levelled (:func:`~policies.balancing.split.balance_shares`,
    the rule the engine routes with). Stops when no copy helps or no slot is free.
    """
    replicas = np.full((ranks, slots), -1, dtype=np.int64)
    if slots == 0 or ranks < 2:
        return replicas
    load = np.asarray(load, dtype=np.float64)
    base = np.bincount(home, weights=load, minlength=ranks).tolist()  # [ranks] unreplicated
    rank_load = list(base)
    home_list = home.tolist()
    by_rank: list[list[int]] = [[] for _ in range(ranks)]  # home experts, heaviest first
    for e in np.argsort(-load, kind="stable").tolist():
        if load[e] > 0:
            by_rank[home_list[e]].append(e)
    holders: dict[int, list[int]] = {}  # replicated expert -> ranks
    share: dict[int, list[float]] = {}  # replicated expert -> pairs per holder
    free = [slots] * ranks
    for _ in range(ranks * slots):
        current_max = max(rank_load)
        current = (round(current_max / min_gain), sum(x * x for x in rank_load) - min_gain)
        hot = rank_load.index(current_max)
        pool = [(share[e][holders[e].index(hot)], e) for e in holders if hot in holders[e]]
        pool += [(float(load[e]), e) for e in by_rank[hot][:candidates] if e not in holders]
        pool.sort(reverse=True)
        light = sorted((r for r in range(ranks) if free[r] > 0), key=lambda r: rank_load[r])
        best = None
        for _, e in pool[:candidates]:
            hs0 = holders.get(e, [home_list[e]])
            mine = share.get(e, [float(load[e])])
            for t in [r for r in light if r not in hs0][:targets]:
                hs = [*hs0, t]
                other = [rank_load[h] - a for h, a in zip(hs, [*mine, 0.0], strict=True)]
                filled = [o + a for o, a in zip(other, waterfill(float(load[e]), other),
                                                strict=True)]
                rest = [rank_load[r] for r in range(ranks) if r not in hs]
                score = (round(max(max(filled), *rest, 0.0) / min_gain),
                         sum(x * x for x in filled) + sum(x * x for x in rest))
                if score < current and (best is None or score < best[0]):
                    best = (score, e, t)
        if best is None:
            break
        _, e, t = best
        if e not in holders:
            holders[e] = [home_list[e]]
            base[home_list[e]] -= float(load[e])
        holders[e].append(t)
        replicas[t, slots - free[t]] = e
        free[t] -= 1
        rank_load = list(base)
        share = balance_shares({x: float(load[x]) for x in holders}, holders, rank_load)
    return replicas


def replicate_heaviest(load: np.ndarray, home: np.ndarray, ranks: int,
                       slots: int) -> np.ndarray:
    """EPLB-style plan: ``[ranks, slots]`` expert ids, -1 empty.

    Extra copies go one at a time to the expert with the highest load per copy (at most one
    copy per rank); each copy lands on the least loaded rank (load per copy counted) that has a
    free slot and does not hold the expert yet.
    """
    replicas = np.full((ranks, slots), -1, dtype=np.int64)
    if slots == 0 or ranks < 2:
        return replicas
    load = np.asarray(load, dtype=np.float64)
    copies = np.ones(len(load), dtype=np.int64)
    for _ in range(ranks * slots):
        per_copy = np.where(copies < ranks, load / copies, -1.0)
        e = int(np.argmax(per_copy))
        if per_copy[e] <= 0:
            break
        copies[e] += 1
    rank_load = np.bincount(home, weights=load / copies, minlength=ranks)  # [ranks]
    free = np.full(ranks, slots)
    extra = np.flatnonzero(copies > 1)
    for e in extra[np.argsort(-(load[extra] / copies[extra]), kind="stable")].tolist():
        for _ in range(int(copies[e]) - 1):
            ok = (free > 0) & ~(replicas == e).any(axis=1)
            ok[home[e]] = False
            if not ok.any():
                break
            t = int(np.flatnonzero(ok)[np.argmin(rank_load[ok])])
            replicas[t, slots - free[t]] = e
            free[t] -= 1
            rank_load[t] += load[e] / copies[e]
    return replicas
