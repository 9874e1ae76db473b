"""Shared builders for the trace tests (the analysis fixtures carry an ``analysis_`` prefix)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


def _make_trace(expert_ids: Sequence | np.ndarray, num_experts: int, *,
                request_id: Sequence[int] | np.ndarray | None = None,
                lookahead: dict[int, np.ndarray] | None = None) -> Trace:
    """A validated Trace from hand-written ids [T, L, k]; one request unless ``request_id``."""
    ids = np.asarray(expert_ids, dtype=np.int16)
    n_tokens, n_layers, k = ids.shape
    spec = ModelSpec(name="tiny", num_layers=n_layers, num_experts=num_experts, top_k=k,
                     hidden_size=8, expert_intermediate_size=8)
    rid = np.zeros(n_tokens, np.int32) if request_id is None else np.asarray(request_id, np.int32)
    position = np.zeros(n_tokens, np.int32)
    for r in np.unique(rid):  # positions 0, 1, ... within each request, in row order
        rows = np.flatnonzero(rid == r)
        position[rows] = np.arange(rows.size)
    trace = Trace(spec, rid, position, np.ones(n_tokens, np.int8), ids,
                  np.full(ids.shape, 1.0 / k, np.float32),
                  lookahead={d: np.asarray(a, np.int16) for d, a in (lookahead or {}).items()})
    trace.validate()
    return trace


@pytest.fixture
def analysis_make_trace() -> Callable[..., Trace]:
    """``make(expert_ids [T, L, k], num_experts, request_id=None, lookahead=None) -> Trace``."""
    return _make_trace
