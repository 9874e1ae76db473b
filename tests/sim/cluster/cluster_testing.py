"""Shared helpers of the cluster tests: small traces with uniform or planted-skew routing."""

from __future__ import annotations

import numpy as np
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


def small_spec(name: str = "olmoe-1b-7b", **overrides: object) -> ModelSpec:
    """A bundled model spec with some fields overridden."""
    return load_model(name, **overrides)


def routed_trace(spec: ModelSpec, requests: int, tokens_per_request: int,
                 weights: np.ndarray | None = None, seed: int = 0,
                 decode: bool = False) -> Trace:
    """Every token picks ``top_k`` distinct experts, in proportion to ``weights`` [L, E]
    (uniform when None), by the Gumbel top-k trick. All tokens prefill unless ``decode``."""
    rng = np.random.default_rng(seed)
    layers, experts, k = spec.num_moe_layers, spec.num_experts, spec.top_k
    n = requests * tokens_per_request
    if weights is None:
        weights = np.ones((layers, experts))
    logits = np.log(weights)[None] + rng.gumbel(size=(n, layers, experts))  # [T, L, E]
    ids = np.argsort(-logits, axis=2)[:, :, :k].astype(np.int16)  # [T, L, k]
    request_id = np.repeat(np.arange(requests, dtype=np.int32), tokens_per_request)
    position = np.tile(np.arange(tokens_per_request, dtype=np.int32), requests)
    phase = np.full(n, 1 if decode else 0, dtype=np.int8)
    gates = np.full((n, layers, k), 1.0 / k, dtype=np.float32)
    trace = Trace(spec, request_id, position, phase, ids, gates)
    trace.validate()
    return trace
