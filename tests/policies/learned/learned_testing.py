"""Shared helpers of the learned-predictor tests: a tiny trace with a planted routing rule."""

from __future__ import annotations

import moe_offload_lab.traces.bundled as bundled_traces
import numpy as np
from moe_offload_lab.traces.format import Trace, read_spec

N_EXPERTS = 8


def successor(e: np.ndarray) -> np.ndarray:
    """The planted rule: expert ``e`` at layer ``l`` -> ``(3 e + 1) mod 8`` at ``l + 1``."""
    return (3 * e + 1) % N_EXPERTS


def planted_trace(requests: int = 24, tokens_per_request: int = 10, seed: int = 0,
                  features: bool = True) -> Trace:
    """4 MoE layers, 8 experts, top-2: layer 0 random, every later layer = successor of the
    previous one (a permutation, so ids stay distinct); features = multi-hot of the layer's
    experts plus noise (8 wide)."""
    spec = read_spec(bundled_traces.path()).with_overrides(name="planted", num_experts=N_EXPERTS)
    rng = np.random.default_rng(seed)
    n = requests * tokens_per_request
    ids = np.zeros((n, 4, 2), dtype=np.int16)  # [T, L, k]
    for t in range(n):
        ids[t, 0] = rng.choice(N_EXPERTS, 2, replace=False)
    for layer in range(1, 4):
        ids[:, layer] = successor(ids[:, layer - 1])
    feats = None
    if features:
        hot = np.zeros((n, 4, N_EXPERTS), dtype=np.float32)  # [T, L, F]
        np.put_along_axis(hot, ids.astype(np.int64), 1.0, axis=2)
        feats = (hot + 0.05 * rng.standard_normal(hot.shape)).astype(np.float32)
    look = {}
    for d in (1, 2):
        la = np.full_like(ids, -1)
        la[:, :4 - d] = ids[:, d:]
        look[d] = la
    trace = Trace(spec=spec,
                  request_id=np.repeat(np.arange(requests), tokens_per_request).astype(np.int32),
                  position=np.tile(np.arange(tokens_per_request), requests).astype(np.int32),
                  phase=np.tile((np.arange(tokens_per_request) >= 3).astype(np.int8), requests),
                  expert_ids=ids, gate_weights=np.full(ids.shape, 0.5, dtype=np.float32),
                  lookahead=look, features=feats, provenance={"generator": "planted (tests)"})
    trace.validate()
    return trace
