"""Count-only captures (expert activation counts, load matrices) as traces of synthetic tokens.

Several tools keep only how many times each expert was picked: MoE-Infinity's expert activation
matrices (per sequence), SGLang's ``stat`` expert-distribution dumps (per forward pass), EPLB's
load matrix (one window). A trace needs tokens, so :func:`counts_trace` **reconstructs** them:
each count matrix ``[L, E]`` becomes ``n = sum_e counts[l, e] / k`` tokens (the same for every
layer, else an error) whose per-layer expert counts equal the matrix exactly, every token picking
``k`` distinct experts (:func:`reconstruct_tokens`).

What such a trace can be used for, honestly:

- **exact**: per group (request or step) and per layer, which experts were used and how many
  tokens each received, hence expert popularity, per-layer load and its imbalance, the experts a
  batch of that group needs (the union), tokens per expert for compute time, and the order of the
  groups in time;
- **synthetic** (do not measure them): which tokens share experts, the cross-layer structure of a
  token's choices (mutual information, lookahead and history predictors read it), reuse between
  consecutive tokens inside a group, LRU or Belady hit ratios at token granularity, gate weights
  (``1/k``), prefill/decode phases (all prefill).

Every such trace carries ``provenance["count_only"] = True`` with the list of synthetic aspects, so
a reader can tell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import TraceError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.spec import ModelSpec

SYNTHETIC = ["which tokens share experts", "cross-layer structure of each token",
             "token order and reuse inside a group", "gate weights (1/k)",
             "prefill/decode phases (all prefill)"]
EXACT = ["per-group, per-layer expert counts (popularity, load, the experts a group needs, "
         "tokens per expert)", "the order of the groups"]


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


def count_matrix(array: np.ndarray, spec: ModelSpec, what: str, where: str) -> np.ndarray:
    """``[G, layers, E]`` counts (any integer dtype, or whole floats) -> int64 ``[G, L, E]`` with
    the layer axis reduced to the MoE layers; shape and sign checked."""
    if array.ndim != 3:
        raise TraceError(f"{where}: {what} must be a [groups, layers, experts] array, got shape "
                         f"{array.shape}")
    if array.shape[2] != spec.num_experts:
        raise TraceError(f"{where}: {what} has {array.shape[2]} experts per layer, model "
                         f"{spec.name!r} has {spec.num_experts}")
    counts = c.to_moe_layers(c.integer_array(array, what, where), spec, where)
    if counts.size and counts.min() < 0:
        group, layer, expert = np.argwhere(counts < 0)[0]
        raise TraceError(f"{where}: negative count {int(counts[group, layer, expert])} at "
                         f"{group}, layer {layer}, expert {expert}")
    return counts


def counts_trace(spec: ModelSpec, counts: np.ndarray, group_ids: np.ndarray, path: Path,
                 source: str, importer: str, group: str, **details: Any) -> Trace:
    """A trace of synthetic tokens from per-group counts ``counts`` [G, L, E] (int64, MoE layers).

    Group ``g`` becomes request ``group_ids[g]`` (positions ``0..``, all prefill); all-zero groups
    are skipped (counted in the provenance). ``group`` names what a group was ("sequence",
    "forward pass", ...).
    """
    where = str(path)
    k = spec.top_k
    ids, rids, lengths = [], [], []
    for g in range(counts.shape[0]):
        if not counts[g].any():
            continue
        ids.append(reconstruct_tokens(counts[g], k, f"{where}: {group} {int(group_ids[g])}"))
        rids.append(int(group_ids[g]))
        lengths.append(ids[-1].shape[0])
    if not ids:
        raise TraceError(f"{where}: every {group} is empty (no activation counted)")
    expert_ids = np.concatenate(ids)  # [T, L, k]
    request_id, position, phase = c.request_rows(np.array(lengths, np.int64), None,
                                                 np.array(rids, np.int64))
    prov = c.provenance(
        source, importer, path, spec, count_only=True,
        requests=f"one request per {group} (request id = its index in the file)",
        reconstruction=f"per {group}, n = counts per layer / top_k synthetic tokens; the experts "
                       f"of each layer, sorted by decreasing count, are dealt into the token x "
                       f"slot grid column by column, so per-layer counts match exactly and no "
                       f"token repeats an expert",
        exact=EXACT, synthetic=SYNTHETIC,
        gates="filled in: uniform 1/k (counts hold no gate weights)",
        phase="unknown: every token marked prefill",
        empty_groups_skipped=int(counts.shape[0] - len(ids)),
        lost=["token identity and order", "gate weights", "prefill/decode phases",
              f"empty {group}s"], **details)
    return c.build_trace(spec, request_id, position, phase,
                         c.check_expert_ids(expert_ids, spec, where),
                         c.uniform_gates(expert_ids.shape), prov, where)


def per_group_counts(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per-request expert counts ``[R, L, E]`` int64 (requests by first appearance) and the
    request ids ``[R]``."""
    spec = trace.spec
    order, requests, lengths = c.grouped_by_request(trace)
    rank = np.repeat(np.arange(len(requests)), lengths)  # [T] request index of grouped rows
    ids = trace.expert_ids[order].astype(np.int64)  # [T, L, k]
    layers = np.arange(spec.num_moe_layers)[None, :, None]
    flat = (rank[:, None, None] * spec.num_moe_layers + layers) * spec.num_experts + ids
    counts = np.bincount(flat.reshape(-1), minlength=len(requests) * spec.num_expert_keys)
    return counts.reshape(len(requests), spec.num_moe_layers, spec.num_experts), requests
