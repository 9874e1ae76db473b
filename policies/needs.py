"""What a batch needs: per-layer distinct experts of a step, and the schedule's access stream.

The experts a batch needs at a layer are the union over its tokens. Engines, offline evaluation
and oracle components all derive them here with numpy, once per step, so per-layer work is a list
lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def consecutive_batches(num_tokens: int, batch: int) -> list[np.ndarray]:
    """Schedule of ``batch`` consecutive trace rows per step (the last step may be shorter)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    return [np.arange(start, min(start + batch, num_tokens), dtype=np.int64)  # [B]
            for start in range(0, num_tokens, batch)]


def step_counts(expert_rows: np.ndarray, num_experts: int) -> np.ndarray:
    """Tokens per expert at every layer: ``expert_rows`` [B, L, k] -> counts [L, E] int64."""
    n_layers = expert_rows.shape[1]
    offsets = (np.arange(n_layers, dtype=np.int64) * num_experts)[None, :, None]  # [1, L, 1]
    flat = (expert_rows.astype(np.int64) + offsets).ravel()  # [B * L * k]
    return np.bincount(flat, minlength=n_layers * num_experts).reshape(n_layers, num_experts)


def step_experts(expert_rows: np.ndarray, num_experts: int
                 ) -> tuple[list[list[int]], list[list[int]]]:
    """Per layer: the distinct experts (ascending) and their token counts, as plain lists.

    ``expert_rows`` [B, L, k] are the batch's trace rows of ``Trace.expert_ids``.
    """
    if expert_rows.shape[0] == 1:
        experts = np.sort(expert_rows[0], axis=1).tolist()  # [L][k]
        k = expert_rows.shape[2]
        ones = [1] * k
        return experts, [ones] * len(experts)
    counts = step_counts(expert_rows, num_experts)  # [L, E]
    layers, ids = np.nonzero(counts)
    bounds = np.searchsorted(layers, np.arange(1, counts.shape[0]))
    experts = [part.tolist() for part in np.split(ids, bounds)]
    tokens = [part.tolist() for part in np.split(counts[layers, ids], bounds)]
    return experts, tokens


def access_stream(expert_ids: np.ndarray, schedule: Sequence[np.ndarray], num_experts: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Every (time, key) access of a schedule, in time order.

    Time of layer ``l`` of step ``s`` is ``s * L + l``. Returns ``times`` [N] and ``keys`` [N]
    int64, one entry per distinct key per (step, layer); ties within a time sorted by key.
    """
    n_layers = expert_ids.shape[1]
    if not len(schedule):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in schedule])  # [R]
    steps = np.repeat(np.arange(len(schedule), dtype=np.int64),
                      [len(r) for r in schedule])  # [R] step of each row
    layers = np.arange(n_layers, dtype=np.int64)[None, :, None]  # [1, L, 1]
    # (time, expert) packed into one int per access: [R, L, k]
    packed = ((steps[:, None, None] * n_layers + layers) * num_experts
              + expert_ids[rows].astype(np.int64))
    packed = np.sort(packed.ravel(), kind="stable")  # nearly sorted already: timsort is fast
    if packed.size:
        packed = packed[np.concatenate(([True], packed[1:] != packed[:-1]))]  # distinct
    times = packed // num_experts
    keys = (times % n_layers) * num_experts + packed % num_experts
    return times, keys
