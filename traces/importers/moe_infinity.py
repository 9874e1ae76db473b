"""MoE-Infinity expert activation matrices (EAMs) to and from traces.

MoE-Infinity's ``ExpertTracer`` (``moe_infinity/memory/expert_tracer.py``) keeps a collection
``[n, layers, experts]`` (float32, saved and loaded with ``np.save``/``np.load``): row ``i`` is
one sequence's expert activation matrix, entry ``[l, e]`` the number of times expert ``e`` of MoE
layer ``l`` was picked over all the sequence's tokens. Rows that are all zero are unused slots of
the collection and are skipped.

Only per-request counts exist, so the importer **reconstructs** tokens (see
:func:`reconstruct_tokens`): each request gets ``n = sum_e counts[l, e] / k`` synthetic tokens
(the same for every layer, else an error) whose per-layer expert counts equal the matrix exactly,
each token picking ``k`` distinct experts. Token order, which tokens share experts, cross-layer
and temporal structure, phases and gate weights are not in the file; the provenance says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.spec import ModelSpec


def import_moe_infinity(path: str | Path, model: str | ModelSpec) -> Trace:
    """Read an EAM collection ``.npy`` [n, layers, experts] as a trace of ``model``.

    Request ``i`` of the trace is row ``i`` of the file (empty rows are skipped, so ids may have
    gaps); its tokens are prefill at positions ``0 ..``.
    """
    path = Path(path)
    spec = c.load_spec(model)
    where = str(path)
    eam = c.load_npy(path)
    if eam.ndim != 3:
        raise TraceError(f"{where}: expected an [n, layers, experts] array, got shape {eam.shape}")
    if eam.shape[2] != spec.num_experts:
        raise TraceError(f"{where}: the matrix has {eam.shape[2]} experts per layer, model "
                         f"{spec.name!r} has {spec.num_experts}")
    counts = c.to_moe_layers(c.integer_array(eam, "the activation counts", where), spec, where)
    if counts.size and counts.min() < 0:
        raise TraceError(f"{where}: negative activation count at row "
                         f"{int(np.argwhere(counts < 0)[0][0])}")
    k = spec.top_k
    ids, rids, lengths = [], [], []
    for row in range(counts.shape[0]):
        matrix = counts[row]  # [L, E]
        if not matrix.any():
            continue
        ids.append(reconstruct_tokens(matrix, k, f"{where}: row {row}"))
        rids.append(row)
        lengths.append(ids[-1].shape[0])
    if not ids:
        raise TraceError(f"{where}: every row is empty (no activation counted)")
    expert_ids = np.concatenate(ids)  # [T, L, k]
    request_id, position, phase = c.request_rows(np.array(lengths, np.int64), None,
                                                 np.array(rids, np.int64))
    prov = c.provenance("moe-infinity-import", __name__, path, spec,
        reconstruction="per request, n = counts per layer / top_k synthetic tokens; the "
        "experts of each layer, sorted by decreasing count, are dealt into the token x slot grid "
        "column by column, so per-layer counts match the matrix exactly and no token repeats an "
        "expert",
        gates="filled in: uniform 1/k (an activation matrix holds no gate weights)",
        phase="unknown: every token marked prefill",
        lost=["token order", "which tokens share experts", "cross-layer and temporal structure",
              "gate weights", "prefill/decode phases", "empty rows of the collection"],
    )
    return c.build_trace(spec, request_id, position, phase, c.check_expert_ids(expert_ids, spec,
                         where), c.uniform_gates(expert_ids.shape), prov, where)


def reconstruct_tokens(counts: np.ndarray, k: int, where: str) -> np.ndarray:
    """Synthetic tokens [n, L, k] whose per-layer expert counts equal ``counts`` [L, E].

    Every layer must count ``n * k`` activations (the same ``n`` for all layers) and no expert
    more than ``n`` times (a token picks ``k`` distinct experts). Per layer, the experts sorted by
    decreasing count (ties by id) are written out, each repeated ``count`` times, and dealt into
    the ``[n, k]`` grid column by column: a run of at most ``n`` equal ids then lands on distinct
    tokens, so no token repeats an expert. Deterministic.
    """
    totals = counts.sum(axis=1)  # [L]
    if (totals != totals[0]).any():
        layer = int(np.argmax(totals != totals[0]))
        raise TraceError(f"{where}: layer {layer} counts {int(totals[layer])} activations, "
                         f"layer 0 {int(totals[0])}; every layer must count tokens x top_k")
    if totals[0] % k:
        raise TraceError(f"{where}: {int(totals[0])} activations per layer is not a multiple of "
                         f"top_k={k}")
    n = int(totals[0]) // k
    if (counts > n).any():
        layer, expert = np.argwhere(counts > n)[0]
        raise TraceError(f"{where}: expert {expert} of layer {layer} is counted "
                         f"{int(counts[layer, expert])} times, more than the {n} tokens "
                         f"(top_k={k} experts per token are distinct)")
    out = np.empty((n, counts.shape[0], k), np.int64)  # [n, L, k]
    for layer, row in enumerate(counts):
        order = np.lexsort((np.arange(row.size), -row))  # decreasing count, then id
        sequence = np.repeat(order, row[order])  # [n * k]
        out[:, layer, :] = sequence.reshape(k, n).T  # slot i -> token i % n, column i // n
    return out


def export_moe_infinity(trace: Trace, path: str | Path) -> Path:
    """Write the per-request expert activation matrices of ``trace`` as a float32 ``.npy``
    [requests, L, E] (MoE-Infinity's layout); row ``i`` is the ``i``-th request by first
    appearance. Everything but the counts is lost."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise ConfigError(f"{path}: the MoE-Infinity export is a .npy file; name it *.npy")
    return c.save_npy(path, activation_counts(trace).astype(np.float32))


def activation_counts(trace: Trace) -> np.ndarray:
    """Per-request expert activation counts [R, L, E] int64, requests by first appearance."""
    spec = trace.spec
    order, requests, lengths = c.grouped_by_request(trace)
    rank = np.repeat(np.arange(len(requests)), lengths)  # [T] request index of grouped rows
    ids = trace.expert_ids[order].astype(np.int64)  # [T, L, k]
    layers = np.arange(spec.num_moe_layers)[None, :, None]
    flat = (rank[:, None, None] * spec.num_moe_layers + layers) * spec.num_experts + ids
    counts = np.bincount(flat.reshape(-1), minlength=len(requests) * spec.num_expert_keys)
    return counts.reshape(len(requests), spec.num_moe_layers, spec.num_experts)
