"""Per-step routing counts from a trace, with numpy (no per-token Python work)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.traces.format import Trace


@dataclass
class StepLoads:
    """Counts of one step (``B`` tokens): token-expert pairs, by layer and by source rank.

    Tokens sit on ranks round-robin (data-parallel attention): token ``i`` of the step on rank
    ``i % ranks``; dispatch sends each pair from that rank to the rank computing it.
    """

    num_tokens: int
    load: np.ndarray  # [layers, experts] routed pairs
    by_src: np.ndarray  # [ranks, layers, experts] pairs whose token sits on each rank
    lookahead: dict[int, np.ndarray]  # d -> [layers, experts] predicted for layer t from t-d
    lookahead_valid: dict[int, np.ndarray]  # d -> [layers] bool: a column reaches layer t


def step_loads(trace: Trace, rows: np.ndarray, ranks: int) -> StepLoads:
    """Count the routing of ``rows`` (one step) for a cluster of ``ranks``."""
    ids = trace.expert_ids[rows].astype(np.int64)  # [B, L, k]
    num_tokens, layers, _ = ids.shape
    experts = trace.spec.num_experts
    layer_base = (np.arange(layers) * experts)[None, :, None]  # [1, L, 1]
    load = np.bincount((ids + layer_base).ravel(),
                       minlength=layers * experts).reshape(layers, experts)  # [L, E]
    src = (np.arange(num_tokens) % ranks)[:, None, None] * (layers * experts)  # [B, 1, 1]
    by_src = np.bincount((ids + layer_base + src).ravel(), minlength=ranks * layers * experts)
    by_src = by_src.reshape(ranks, layers, experts)  # [ranks, L, E]
    lookahead: dict[int, np.ndarray] = {}
    valid: dict[int, np.ndarray] = {}
    for d, ahead in trace.lookahead.items():
        cols = ahead[rows].astype(np.int64)  # [B, L, k] predicts layer l + d from layer l
        counts = np.zeros((layers, experts), dtype=np.int64)  # [L, E] by target layer
        if d < layers:
            part = cols[:, : layers - d]  # [B, L - d, k]
            ok = part >= 0
            target = (np.arange(d, layers) * experts)[None, :, None]  # [1, L - d, 1]
            flat = (part + target)[ok]
            counts = np.bincount(flat, minlength=layers * experts).reshape(layers, experts)
        lookahead[d] = counts
        valid[d] = np.arange(layers) >= d
    return StepLoads(num_tokens, load, by_src, lookahead, valid)
