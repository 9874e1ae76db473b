"""Splitting a replicated expert's tokens over its copies (balanced water-filling).

Experts without replicas put all their tokens on their home rank. The tokens of replicated
experts are then spread over their holders (home plus replica ranks) by sweeps of
water-filling: each expert in turn takes its tokens back and pours them onto its holders so they
end as level as possible, until a sweep changes nothing. This coordinate descent converges to the
most balanced split (the least-squares split, which also minimises the maximum rank load).
Whole tokens at the end: each expert's shares are floored and the leftover tokens go to its
least loaded holders. The engine routes tokens with this rule and the planners judge plans
with it.
"""

from __future__ import annotations

import numpy as np

MAX_SWEEPS = 12


def waterfill(total: float, loads: list[float]) -> list[float]:
    """Real amounts ``a >= 0`` summing to ``total`` that minimise ``max(loads + a)``."""
    ordered = sorted(loads)
    n = len(ordered)
    acc = 0.0
    level = ordered[0] + total
    for k in range(1, n + 1):
        acc += ordered[k - 1]
        level = (total + acc) / k
        if k == n or level <= ordered[k]:
            break
    return [level - x if x < level else 0.0 for x in loads]


def holders_of(expert: int, home: np.ndarray, replicas: np.ndarray) -> list[int]:
    """Ranks holding ``expert``: its home rank first, then replica ranks ascending."""
    first = int(home[expert])
    ranks = np.flatnonzero((replicas == expert).any(axis=1)).tolist()
    return [first, *[r for r in ranks if r != first]]


def balance_shares(tokens: dict[int, float], holders: dict[int, list[int]],
                   base: list[float], tol: float = 0.25) -> dict[int, list[float]]:
    """Water-filling sweeps: per replicated expert, its amount on each holder (floats).

    ``tokens`` expert -> pairs, ``holders`` expert -> ranks, ``base`` [ranks] load of
    everything not replicated (modified in place to the final rank loads).
    """
    order = sorted(tokens, key=lambda e: (-tokens[e], e))
    shares: dict[int, list[float]] = {}
    for e in order:  # first pass: heaviest first onto what is there
        hs = holders[e]
        amounts = waterfill(tokens[e], [base[h] for h in hs])
        shares[e] = amounts
        for h, a in zip(hs, amounts, strict=True):
            base[h] += a
    for _ in range(MAX_SWEEPS):
        moved = 0.0
        for e in order:
            hs, old = holders[e], shares[e]
            other = [base[h] - a for h, a in zip(hs, old, strict=True)]
            amounts = waterfill(tokens[e], other)
            for i, h in enumerate(hs):
                base[h] = other[i] + amounts[i]
                moved = max(moved, abs(amounts[i] - old[i]))
            shares[e] = amounts
        if moved < tol:
            break
    return shares


def split_tokens(tokens: np.ndarray, home: np.ndarray, replicas: np.ndarray) -> np.ndarray:
    """Tokens each rank computes for each expert: ``[ranks, experts]`` int64.

    ``tokens`` [E] routed pairs per expert, ``home`` [E] primary ranks, ``replicas`` [ranks, R]
    redundant-slot table (-1 empty). Columns sum to ``tokens`` (conservation).
    """
    ranks = replicas.shape[0]
    num_experts = len(tokens)
    tokens = np.asarray(tokens, dtype=np.int64)
    inst = np.zeros((ranks, num_experts), dtype=np.int64)  # [ranks, experts]
    inst[home, np.arange(num_experts)] = tokens
    replicated = [e for e in np.unique(replicas[replicas >= 0]).tolist() if tokens[e] > 0]
    if not replicated:
        return inst
    inst[:, replicated] = 0
    base = inst.sum(axis=1).astype(np.float64).tolist()  # [ranks]
    holders = {e: holders_of(e, home, replicas) for e in replicated}
    shares = balance_shares({e: float(tokens[e]) for e in replicated}, holders, base)
    whole = inst.sum(axis=1).tolist()  # integer loads as shares are rounded
    for e in sorted(replicated, key=lambda e: (-tokens[e], e)):
        hs = holders[e]
        amounts = [int(a + 1e-9) for a in shares[e]]
        left = int(tokens[e]) - sum(amounts)
        frac = sorted(range(len(hs)), key=lambda i: (whole[hs[i]] + shares[e][i], i))
        for i in frac[:left]:
            amounts[i] += 1
        for h, a in zip(hs, amounts, strict=True):
            inst[h, e] = a
            whole[h] += a
    return inst


def rank_loads_float(load: np.ndarray, home: np.ndarray, replicas: np.ndarray,
                     tol: float = 1e-3) -> np.ndarray:
    """Rank loads ``[ranks]`` of the real-valued split (no rounding): the planners' view."""
    load = np.asarray(load, dtype=np.float64)
    replicated = [e for e in np.unique(replicas[replicas >= 0]).tolist() if load[e] > 0]
    keep = np.ones(len(load), dtype=bool)
    keep[replicated] = False
    base = np.bincount(home[keep], weights=load[keep], minlength=replicas.shape[0]).tolist()
    balance_shares({e: float(load[e]) for e in replicated},
                   {e: holders_of(e, home, replicas) for e in replicated}, base, tol=tol)
    return np.array(base)


def rank_loads(tokens: np.ndarray, home: np.ndarray, replicas: np.ndarray) -> np.ndarray:
    """Token-expert pairs per rank under :func:`split_tokens`: ``[ranks]``."""
    return split_tokens(tokens, home, replicas).sum(axis=1)


def imbalance(rank_load: np.ndarray) -> float:
    """Max over mean rank load (1.0 is perfect; 1.0 also when nothing was routed)."""
    mean = float(np.mean(rank_load))
    return float(np.max(rank_load)) / mean if mean > 0 else 1.0
