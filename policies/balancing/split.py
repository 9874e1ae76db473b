"""Splitting each expert's tokens over the slots that hold it, by a plan's shares.

A placement ``slots`` ``[ranks, S]`` may hold an expert in several slots (replicas). The plan
gives each slot a fraction of its expert's tokens (``share``; or an even split when it gives
none); the real token counts are rounded by largest remainder, so every expert's tokens are
conserved exactly. Experts held once take all their tokens on their one slot. The engine routes
tokens with this rule and planners judge plans with the same fractions.
"""

from __future__ import annotations

import numpy as np


def slot_fractions(slots: np.ndarray, num_experts: int,
                   share: np.ndarray | None = None) -> np.ndarray:
    """Fraction of its expert's tokens each slot takes: ``[ranks, S]`` float (0 for empty
    slots). ``share`` None: ``1 / copies`` per slot; else ``share`` checked (non-negative,
    summing to 1 per expert)."""
    valid = slots >= 0
    ids = np.where(valid, slots, 0)
    if share is None:
        copies = np.bincount(slots[valid], minlength=num_experts)  # [E]
        return np.where(valid, 1.0 / np.maximum(copies[ids], 1), 0.0)
    share = np.asarray(share, dtype=np.float64)
    if share.shape != slots.shape or (share < 0).any():
        raise ValueError("share must be a non-negative [ranks, S] table like the placement")
    frac = np.where(valid, share, 0.0)
    total = np.bincount(slots[valid], weights=frac[valid], minlength=num_experts)  # [E]
    if np.abs(total - 1.0).max() > 1e-6:
        raise ValueError("the shares of each expert must sum to 1")
    return frac


def split_tokens(load: np.ndarray, slots: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Tokens each slot computes: ``[ranks, S]`` int64. ``load`` ``[E]`` routed pairs,
    ``frac`` from :func:`slot_fractions`. Column sums per expert equal ``load`` (conservation):
    shares are floored and each expert's leftover tokens go to its slots with the largest
    remainders (the first slot, in row-major order, on ties)."""
    load = np.asarray(load, dtype=np.int64)
    valid = slots >= 0
    ids = np.where(valid, slots, 0)
    exact = np.where(valid, load[ids] * frac, 0.0)  # [ranks, S]
    tokens = np.floor(exact + 1e-9).astype(np.int64)
    flat_ids, flat_tokens = ids.ravel(), tokens.ravel()
    short = load - np.bincount(flat_ids[valid.ravel()], weights=flat_tokens[valid.ravel()],
                               minlength=len(load)).astype(np.int64)  # [E]
    if not short.any():
        return tokens
    where = np.flatnonzero(valid.ravel() & (short[flat_ids] > 0))  # candidate slots
    rem = exact.ravel()[where] - flat_tokens[where]
    order = np.lexsort((where, -rem, flat_ids[where]))  # by expert, largest remainder first
    chosen = where[order]
    experts = flat_ids[chosen]
    starts = np.r_[0, np.flatnonzero(experts[1:] != experts[:-1]) + 1]
    rank_in_group = np.arange(len(chosen)) - np.repeat(starts, np.diff(np.r_[starts,
                                                                              len(chosen)]))
    take = chosen[rank_in_group < short[experts]]
    out = tokens.ravel().copy()
    out[take] += 1
    return out.reshape(tokens.shape)


def rank_expert_tokens(slot_tokens: np.ndarray, slots: np.ndarray,
                       num_experts: int) -> np.ndarray:
    """``[ranks, E]`` tokens each rank computes for each expert (two slots of one expert on one
    rank merge into one instance)."""
    ranks = slots.shape[0]
    valid = slots >= 0
    flat = (np.arange(ranks)[:, None] * num_experts + np.where(valid, slots, 0))[valid]
    counts = np.bincount(flat, weights=slot_tokens[valid], minlength=ranks * num_experts)
    return counts.astype(np.int64).reshape(ranks, num_experts)


def imbalance(rank_load: np.ndarray) -> float:
    """Max over mean rank load (1.0 is perfect; 1.0 also when nothing was routed)."""
    mean = float(np.mean(rank_load))
    return float(np.max(rank_load)) / mean if mean > 0 else 1.0
