"""Training examples from traces, and the split of a trace BY REQUEST.

One example is one (token, source layer ``l``) pair of a trace:

- ``layer`` [N]: the source MoE layer ``l``;
- ``history`` [N, c, k]: the token's experts at layers ``l - c + 1 .. l`` (``E`` pads layers < 0);
- ``features`` [N, F] or None: the trace's feature columns at layer ``l``;
- ``targets`` [N, h, E] bool: the experts at layer ``l + d`` for ``d = 1..h``;
- ``mask`` [N, h] bool: ``l + d < L`` (later targets belong to the next step and are not
  learned, as in the ``history`` predictor);
- ``token`` [N]: the token's row in the trace.

Examples are token-major (all layers of token 0, then token 1...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace


@dataclass
class Examples:
    """Arrays of one set of examples (see module docstring)."""

    layer: np.ndarray  # [N] int64
    history: np.ndarray  # [N, c, k] int64
    features: np.ndarray | None  # [N, F] float32
    targets: np.ndarray  # [N, h, E] bool
    mask: np.ndarray  # [N, h] bool
    token: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return int(self.layer.shape[0])


def build_examples(trace: Trace, rows: np.ndarray | None, context: int,
                   horizon: int) -> Examples:
    """Examples of the trace rows ``rows`` (all rows when None); ``c = context``, ``h = horizon``.
    """
    if context < 1 or horizon < 1:
        raise ConfigError("context and horizon must be at least 1")
    rows = np.arange(trace.num_tokens) if rows is None else np.asarray(rows, dtype=np.int64)
    ids = trace.expert_ids[rows].astype(np.int64)  # [T, L, k]
    n_tok, n_layers, k = ids.shape
    n_exp = trace.spec.num_experts
    pad = np.full((n_tok, context - 1, k), n_exp, dtype=np.int64)  # [T, c-1, k]
    padded = np.concatenate([pad, ids], axis=1)  # [T, L+c-1, k]
    windows = np.lib.stride_tricks.sliding_window_view(padded, context, axis=1)  # [T, L, k, c]
    history = np.ascontiguousarray(windows.transpose(0, 1, 3, 2)).reshape(-1, context, k)
    targets = np.zeros((n_tok, n_layers, horizon, n_exp), dtype=bool)  # [T, L, h, E]
    mask = np.zeros((n_tok, n_layers, horizon), dtype=bool)  # [T, L, h]
    tok_index = np.arange(n_tok)[:, None]
    for d in range(1, horizon + 1):
        for layer in range(n_layers - d):
            targets[tok_index, layer, d - 1, ids[:, layer + d]] = True
            mask[:, layer, d - 1] = True
    features = None
    if trace.features is not None:
        width = trace.features.shape[2]
        features = trace.features[rows].astype(np.float32).reshape(n_tok * n_layers, width)
    return Examples(
        layer=np.tile(np.arange(n_layers, dtype=np.int64), n_tok),
        history=history,
        features=features,
        targets=targets.reshape(n_tok * n_layers, horizon, n_exp),
        mask=mask.reshape(n_tok * n_layers, horizon),
        token=np.repeat(rows, n_layers),
    )


@dataclass(frozen=True)
class Split:
    """Request ids of each part and the matching trace rows (ascending)."""

    train_requests: np.ndarray
    val_requests: np.ndarray
    test_requests: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray


def split_by_request(trace: Trace, val: float = 0.15, test: float = 0.15,
                     seed: int = 0) -> Split:
    """Shuffle the request ids (seeded) and cut them into train/validation/test; every token of
    a request lands in the same part, so no request is seen in training and tested on."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"split fractions must be in [0, 1) and sum below 1, got val={val}, "
                          f"test={test}")
    requests = np.unique(trace.request_id)
    if val == 0 and test == 0:  # no held-out part: every request trains
        rows = np.arange(trace.num_tokens)
        none = np.zeros(0, dtype=np.int64)
        return Split(requests, none, none, rows, none, none)
    if len(requests) < 3:
        raise ConfigError(f"splitting by request needs at least 3 requests, the trace has "
                          f"{len(requests)}")
    order = np.random.default_rng([seed, 0x5E1F]).permutation(requests)
    n = len(order)
    n_test = max(1, round(test * n)) if test > 0 else 0
    n_val = max(1, round(val * n)) if val > 0 else 0
    test_ids = np.sort(order[:n_test])
    val_ids = np.sort(order[n_test:n_test + n_val])
    train_ids = np.sort(order[n_test + n_val:])
    if len(train_ids) == 0:
        raise ConfigError("the split leaves no training requests")

    def rows(ids: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(trace.request_id, ids))

    return Split(train_ids, val_ids, test_ids, rows(train_ids), rows(val_ids), rows(test_ids))


def load_traces(paths: Sequence[str] = (), bundled: str | None = None, preset: str | None = None,
                tokens: int = 4000, seed: int = 0) -> tuple[Trace, dict]:
    """The training trace and its provenance: trace files (concatenated, request ids offset so
    they stay distinct), else a synthetic preset, else a bundled trace."""
    if paths:
        traces = []
        for p in paths:
            if not Path(p).is_file():
                raise ConfigError(f"trace file not found: {p}")
            traces.append(Trace.load(p))
        trace = concat(traces)
        return trace, {"source": "files", "paths": [str(p) for p in paths]}
    if preset:
        from moe_offload_lab.traces.synthetic import generate

        trace = generate(preset, tokens=tokens, seed=seed)
        return trace, {"source": "synthetic", "preset": preset, "tokens": tokens, "seed": seed}
    if bundled:
        import moe_offload_lab.traces.bundled as bundled_traces

        return bundled_traces.load(bundled), {"source": "bundled", "bundled": bundled}
    raise ConfigError("no trace given: set trace.paths, trace.preset or trace.bundled")


def concat(traces: Sequence[Trace]) -> Trace:
    """One trace of several with the same routing shape (features kept only if all have them)."""
    first = traces[0]
    if len(traces) == 1:
        return first
    shape = (first.spec.num_moe_layers, first.spec.num_experts, first.spec.top_k)
    for t in traces[1:]:
        if (t.spec.num_moe_layers, t.spec.num_experts, t.spec.top_k) != shape:
            raise ConfigError(f"traces of different shapes cannot be combined: {first.spec.name} "
                              f"and {t.spec.name}")
    offset, rids = 0, []
    for t in traces:
        rids.append(t.request_id.astype(np.int64) + offset)
        offset = int(rids[-1].max()) + 1
    with_features = all(t.features is not None for t in traces) and \
        len({t.features.shape[2] for t in traces}) == 1  # type: ignore[union-attr]
    distances = set.intersection(*(set(t.lookahead) for t in traces))
    return Trace(
        spec=first.spec,
        request_id=np.concatenate(rids).astype(np.int32),
        position=np.concatenate([t.position for t in traces]),
        phase=np.concatenate([t.phase for t in traces]),
        expert_ids=np.concatenate([t.expert_ids for t in traces]),
        gate_weights=np.concatenate([t.gate_weights for t in traces]),
        lookahead={d: np.concatenate([t.lookahead[d] for t in traces]) for d in distances},
        features=np.concatenate([t.features for t in traces]) if with_features else None,
        provenance={"concatenated": [t.provenance for t in traces]},
    )


def fingerprint(trace: Trace) -> str:
    """A short hash of the trace's routing (to tell whether two traces are the same)."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(trace.expert_ids).tobytes())
    h.update(np.ascontiguousarray(trace.request_id).tobytes())
    return h.hexdigest()[:16]
