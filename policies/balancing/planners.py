"""PROBE's balance planner: replicate hot experts and assign their tokens, within a copy budget.

:func:`plan_replicas` is a greedy over a predicted per-expert load. Each round it takes the rank
with the largest predicted expert time and tries to relieve it by one of

- **shift**: move part of a replicated expert's tokens to another rank that already holds it
  (no copy);
- **replicate**: copy one of its ``candidates`` hottest experts onto one of the ``targets``
  lightest ranks (of the expert's home node) that still have a free redundant slot and copy
  budget left, and give the copy part or all of the expert's tokens (all of them is a "move":
  the home copy then idles).

The amounts tried are the whole share and the balance point of the two ranks (closed form for
the per-token part of the cost); each option is scored exactly with the instance-time model
``f(x) = max(mem_s * (1 - exp(-x)), token_s * x)`` (``x`` expected tokens: a weight read, paid
when at least one token arrives, against the per-token compute). The best option lowers the
largest rank time (in steps of ``min_gain`` of the starting maximum) or, at the same step, the
sum of squared rank times by at least one step squared; the planner stops when nothing does or
slots and budgets run out. Per rank it fills at most ``slots`` redundant slots and makes at most
``budget[r]`` copies (PROBE's hiding window: a copy that cannot land before the layer starts is
not planned). Ties go to the lower rank (lightest ranks), the larger amount and the larger
expert id (candidates), the first option tried.

The algorithm is written once, in :func:`greedy_core`, with plain loops over numpy arrays: the
planner runs it compiled by numba (compiled on first use, cached on disk) and the tests check
the compiled result against the same function run by Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InstanceCost:
    """``f(x) = max(mem_s * (1 - exp(-x)), token_s * x)`` seconds for ``x`` expected tokens."""

    mem_s: float
    token_s: float

    def __call__(self, x: float) -> float:
        return _instance(x, self.mem_s, self.token_s)

    def many(self, x: np.ndarray) -> np.ndarray:
        """:meth:`__call__` over an array."""
        x = np.asarray(x, dtype=np.float64)
        out = np.maximum(self.mem_s * -np.expm1(-np.maximum(x, 0.0)), self.token_s * x)
        return np.where(x > 0.0, out, 0.0)


TOKENS = InstanceCost(0.0, 1.0)  # pure token balance


def _instance(x: float, mem_s: float, token_s: float) -> float:
    if x <= 0.0:
        return 0.0
    a = mem_s * -math.expm1(-x)
    b = token_s * x
    return a if a > b else b


def greedy_core(pred: np.ndarray, home: np.ndarray, home_table: np.ndarray, node: np.ndarray,
                slots: int, budget: np.ndarray, mem_s: float, token_s: float, candidates: int,
                targets: int, min_gain: float) -> tuple[np.ndarray, np.ndarray]:
    """The greedy (module docstring) on arrays: ``pred`` [E] float64, ``home`` [E] int64,
    ``home_table`` [ranks, base] int64, ``node`` [ranks] int64, ``budget`` [ranks] int64.

    Returns ``replicas`` [ranks, slots] (-1 empty) and ``share`` [ranks, base + slots]: the
    fraction of its expert's tokens each slot of ``[home_table | replicas]`` takes.
    """
    n_exp = pred.shape[0]
    ranks = home_table.shape[0]
    replicas = np.full((ranks, slots), -1, dtype=np.int64)
    amount = np.zeros((n_exp, ranks))
    held = np.zeros((n_exp, ranks), dtype=np.bool_)
    replicated = np.zeros(n_exp, dtype=np.bool_)
    rank_t = np.zeros(ranks)
    for e in range(n_exp):
        held[e, home[e]] = True
        rank_t[home[e]] += _instance(pred[e], mem_s, token_s)
    top = 0.0
    for r in range(ranks):
        if rank_t[r] > top:
            top = rank_t[r]
    unit = min_gain * top
    if slots == 0 or ranks < 2 or unit <= 0.0:
        return replicas, _share(home_table, replicas, amount, replicated, pred)
    # experts with load grouped by home rank, heaviest first within a rank (stable)
    by_load = np.argsort(-pred, kind="mergesort")
    rank_start = np.zeros(ranks + 1, dtype=np.int64)
    for e in range(n_exp):
        if pred[e] > 0.0:
            rank_start[home[e] + 1] += 1
    for r in range(ranks):
        rank_start[r + 1] += rank_start[r]
    sorted_experts = np.zeros(rank_start[ranks], dtype=np.int64)
    fill = rank_start[:ranks].copy()
    for e in by_load:
        if pred[e] > 0.0:
            sorted_experts[fill[home[e]]] = e
            fill[home[e]] += 1
    free = np.full(ranks, slots, dtype=np.int64)
    left = np.minimum(budget.astype(np.int64), slots)
    rep_list = np.full(ranks * slots, -1, dtype=np.int64)
    n_rep = 0
    cand_e = np.zeros(candidates + ranks * slots, dtype=np.int64)
    cand_a = np.zeros(candidates + ranks * slots)
    light = np.zeros(ranks, dtype=np.int64)
    for _ in range(2 * ranks * slots):
        hot = 0
        for r in range(1, ranks):
            if rank_t[r] > rank_t[hot]:
                hot = r
        cur_q = math.floor(rank_t[hot] / unit)
        # candidates: replicated experts with tokens on hot, then hot's heaviest home experts
        n_cand = 0
        for i in range(n_rep):
            e = rep_list[i]
            if amount[e, hot] > 0.0:
                cand_e[n_cand] = e
                cand_a[n_cand] = amount[e, hot]
                n_cand += 1
        taken = 0
        for i in range(rank_start[hot], rank_start[hot + 1]):
            if taken == candidates:
                break
            e = sorted_experts[i]
            if not replicated[e]:
                cand_e[n_cand] = e
                cand_a[n_cand] = pred[e]
                n_cand += 1
                taken += 1
        # light ranks with room, ascending by time (lower rank first on ties)
        n_light = 0
        for r in range(ranks):
            if free[r] > 0 and left[r] > 0:
                j = n_light
                while j > 0 and rank_t[light[j - 1]] > rank_t[r]:
                    light[j] = light[j - 1]
                    j -= 1
                light[j] = r
                n_light += 1
        best_q, best_d, best_copy = cur_q, 0.0, 1
        best_e, best_t, best_x, best_h, best_tt = -1, -1, 0.0, 0.0, 0.0
        for pick in range(min(candidates, n_cand)):
            # the largest remaining candidate (amount, then expert id)
            c = pick
            for j in range(pick + 1, n_cand):
                if cand_a[j] > cand_a[c] or (cand_a[j] == cand_a[c] and cand_e[j] > cand_e[c]):
                    c = j
            e, share = cand_e[c], cand_a[c]
            cand_e[c], cand_a[c] = cand_e[pick], cand_a[pick]
            cand_e[pick], cand_a[pick] = e, share
            f_share = _instance(share, mem_s, token_s)
            tried = 0
            for opt in range(ranks + n_light):
                if opt < ranks:  # shift to a rank already holding e
                    t = opt
                    if t == hot or not held[e, t] or not replicated[e]:
                        continue
                    copy = 0
                else:  # copy onto a light rank of e's home node
                    t = light[opt - ranks]
                    if tried == targets:
                        break
                    if held[e, t] or node[t] != node[home[e]]:
                        continue
                    tried += 1
                    copy = 1
                have = amount[e, t] if replicated[e] else 0.0
                f_have = _instance(have, mem_s, token_s)
                rest = 0.0
                for r in range(ranks):
                    if r != hot and r != t and rank_t[r] > rest:
                        rest = rank_t[r]
                step = rank_t[hot] - rank_t[t] - (mem_s if copy == 1 else 0.0)
                balance = step / (2.0 * token_s) if token_s > 0.0 else share
                balance = min(max(balance, 0.0), share)
                for k in range(2):
                    x = share if k == 0 else balance
                    if x <= 0.0 or (k == 1 and x == share):
                        continue
                    new_h = rank_t[hot] - f_share + _instance(share - x, mem_s, token_s)
                    new_t = rank_t[t] - f_have + _instance(have + x, mem_s, token_s)
                    peak = max(new_h, new_t, rest)
                    delta = (new_h * new_h + new_t * new_t - rank_t[hot] * rank_t[hot]
                             - rank_t[t] * rank_t[t]) / (unit * unit)
                    q = math.floor(peak / unit)
                    if delta >= -1.0 or q > cur_q:
                        continue
                    if q < best_q or (q == best_q and (delta < best_d or (
                            delta == best_d and copy < best_copy))):
                        best_q, best_d, best_copy = q, delta, copy
                        best_e, best_t, best_x, best_h, best_tt = e, t, x, new_h, new_t
        if best_e < 0:
            break
        e, t = best_e, best_t
        if not replicated[e]:
            replicated[e] = True
            amount[e, home[e]] = pred[e]
            rep_list[n_rep] = e
            n_rep += 1
        amount[e, hot] -= best_x
        amount[e, t] += best_x
        rank_t[hot], rank_t[t] = best_h, best_tt
        if best_copy == 1:
            held[e, t] = True
            replicas[t, slots - free[t]] = e
            free[t] -= 1
            left[t] -= 1
    return replicas, _share(home_table, replicas, amount, replicated, pred)


def _share(home_table: np.ndarray, replicas: np.ndarray, amount: np.ndarray,
           replicated: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Token share of every slot of ``[home_table | replicas]``: 1 for experts held once."""
    ranks, base = home_table.shape
    width = base + replicas.shape[1]
    share = np.zeros((ranks, width))
    for r in range(ranks):
        for c in range(width):
            e = home_table[r, c] if c < base else replicas[r, c - base]
            if e < 0:
                continue
            if not replicated[e]:
                share[r, c] = 1.0
            elif pred[e] > 0.0:
                share[r, c] = amount[e, r] / pred[e]
    return share


_COMPILED: dict[str, Any] = {}


def compiled_core() -> Any:
    """:func:`greedy_core` compiled by numba (compiled on first use, cached on disk)."""
    if "core" not in _COMPILED:
        import numba

        jit = numba.njit(cache=True)
        env = dict(greedy_core.__globals__, _instance=jit(_instance))
        env["_share"] = jit(type(_share)(_share.__code__, env, "_share_jit"))
        _COMPILED["core"] = jit(type(greedy_core)(greedy_core.__code__, env, "greedy_core_jit"))
    return _COMPILED["core"]


def plan_replicas(load: np.ndarray, home: np.ndarray, home_table: np.ndarray, slots: int,
                  budget: np.ndarray, cost: InstanceCost = TOKENS, candidates: int = 3,
                  targets: int = 2, min_gain: float = 0.01, node: np.ndarray | None = None,
                  compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Greedy plan for predicted ``load`` ``[E]`` (module docstring).

    ``home`` ``[E]`` home ranks, ``home_table`` ``[ranks, base]`` (-1 padded), ``slots`` = R,
    ``budget`` ``[ranks]`` copies each rank may receive, ``node`` ``[ranks]`` node ids (a copy
    stays in its expert's home node). ``compiled=False`` runs the same algorithm in Python.
    Returns ``(replicas [ranks, R], share [ranks, base + R])``.
    """
    ranks = home_table.shape[0]
    if node is None:
        node = np.zeros(ranks, dtype=np.int64)
    core = compiled_core() if compiled else greedy_core
    return core(np.ascontiguousarray(load, dtype=np.float64),
                np.ascontiguousarray(home, dtype=np.int64),
                np.ascontiguousarray(home_table, dtype=np.int64),
                np.ascontiguousarray(node, dtype=np.int64), int(slots),
                np.ascontiguousarray(budget, dtype=np.int64), float(cost.mem_s),
                float(cost.token_s), int(candidates), int(targets), float(min_gain))
