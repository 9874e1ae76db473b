"""Megatron-Core router traces (JSONL, one record per step and layer) to and from traces.

Megatron-Core's router tracer (``megatron/core/transformer/moe/router_trace.py``, enabled with
``--moe-routing-trace-path``) writes ``router_trace_rank{R}.jsonl``, one JSON object per line and
per (step, block, layer)::

    {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 3, "rank": 0,
     "num_tokens": 128, "topk": 2, "top_indices": [[5, 1], [0, 7], ...]}

``layer`` is the transformer block number (0-based, from ``decoder.layers.N``), ``top_indices``
is ``[num_tokens, topk]``. The tracer stores no gate weights and no request structure. This module
reads that layout and accepts four optional per-record fields of its own (written by
:func:`export_megatron`, ignored by Megatron): ``top_probs`` ``[num_tokens, topk]`` gate weights,
and ``request_id``, ``position``, ``phase`` ``[num_tokens]``. See ``traces/importers/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from moe_offload_lab.traces.errors import TraceError
from moe_offload_lab.traces.format import PREFILL, Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.spec import ModelSpec

_TOKEN_FIELDS = ("request_id", "position", "phase")


def import_megatron(path: str | Path, model: str | ModelSpec) -> Trace:
    """Read a Megatron-Core router trace JSONL file as a trace of ``model``.

    Steps become consecutive token blocks in ascending step order; within a step the tokens keep
    Megatron's flattened order. ``block`` other than ``"decoder"`` (MTP heads) is skipped.
    """
    path = Path(path)
    spec = c.load_spec(model)
    where = str(path)
    c.require_file(path)
    block_to_moe = {b: i for i, b in enumerate(spec.moe_layer_indices)}
    steps: dict[int, dict[int, dict[str, Any]]] = {}
    skipped = 0
    try:
        with path.open(encoding="utf-8") as handle:
            skipped = _read_records(handle, spec, block_to_moe, steps, where)
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{where}: cannot read ({c.first_line(exc)})") from None
    if not steps:
        raise TraceError(f"{where}: no decoder router record found")
    ids, gates, rid, pos, phase = [], [], [], [], []
    have_gates = have_tokens = None
    for step in sorted(steps):
        layers = steps[step]
        missing = [b for b, i in block_to_moe.items() if i not in layers]
        if missing:
            raise TraceError(f"{where}: step {step} has no record for MoE layer (block) "
                             f"{missing[0]}")
        records = [layers[i] for i in range(spec.num_moe_layers)]
        n = records[0]["num_tokens"]
        if any(r["num_tokens"] != n for r in records):
            raise TraceError(f"{where}: step {step} has layers with different num_tokens")
        ids.append(np.stack([r["ids"] for r in records], axis=1))  # [n, L, k]
        step_gates = [r.get("probs") for r in records]
        have_gates = _all_or_none(step_gates, have_gates, "top_probs", f"{where}: step {step}")
        if have_gates:
            gates.append(np.stack(step_gates, axis=1))
        tokens = [r.get("tokens") for r in records]
        have_tokens = _all_or_none(tokens, have_tokens, "request_id/position/phase",
                                   f"{where}: step {step}")
        if have_tokens:
            first = tokens[0]
            if any(any(not np.array_equal(t[f], first[f]) for f in _TOKEN_FIELDS)
                   for t in tokens[1:]):
                raise TraceError(f"{where}: step {step}: layers disagree on request_id, "
                                 f"position or phase")
            rid.append(first["request_id"])
            pos.append(first["position"])
            phase.append(first["phase"])
        else:  # one request per step, Megatron's flattened token order
            rid.append(np.full(n, step, np.int64))
            pos.append(np.arange(n, dtype=np.int64))
            phase.append(np.full(n, PREFILL, np.int64))
    expert_ids = c.check_expert_ids(np.concatenate(ids), spec, where)
    gate_weights = np.concatenate(gates) if have_gates else c.uniform_gates(expert_ids.shape)
    lost = [] if have_gates else ["gate weights"]
    if not have_tokens:
        lost.append("request boundaries, positions and phases (each step is one request)")
    prov = c.provenance("megatron-import", __name__, path, spec,
        gates="from top_probs" if have_gates else
        "filled in: uniform 1/k (Megatron's tracer records no gate weights)",
        requests="from request_id/position/phase fields" if have_tokens else
        "one request per step, positions 0.. in Megatron's flattened token order, all prefill",
        skipped_non_decoder_records=skipped,
        lost=lost,
    )
    request_id = _int32(np.concatenate(rid), "request_id", where)
    return c.build_trace(spec, request_id, _int32(np.concatenate(pos), "position", where),
                         np.concatenate(phase).astype(np.int8), expert_ids, gate_weights, prov,
                         where)


def _int32(values: np.ndarray, name: str, where: str) -> np.ndarray:
    info = np.iinfo(np.int32)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise TraceError(f"{where}: {name} does not fit in int32")
    return values.astype(np.int32)


def _read_records(handle: TextIO, spec: ModelSpec, block_to_moe: dict[int, int],
                  steps: dict[int, dict[int, dict[str, Any]]], where: str) -> int:
    """Parse every line into ``steps[step][moe_layer]``; returns the number of skipped records."""
    skipped = 0
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{at}: malformed JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TraceError(f"{at}: expected a JSON object")
        if record.get("block", "decoder") != "decoder" or "mtp_idx" in record:
            skipped += 1
            continue
        step, layer = _int_field(record, "step", at), _int_field(record, "layer", at)
        if layer not in block_to_moe:
            raise TraceError(f"{at}: layer {layer} is not a MoE block of model {spec.name!r} "
                             f"(MoE blocks {spec.moe_layer_indices[0]}.."
                             f"{spec.moe_layer_indices[-1]})")
        topk = _int_field(record, "topk", at) if "topk" in record else spec.top_k
        if topk != spec.top_k:
            raise TraceError(f"{at}: topk={topk}, but model {spec.name!r} has top_k={spec.top_k}")
        ids = _matrix(record, "top_indices", at, np.int64, spec.top_k)
        n = _int_field(record, "num_tokens", at) if "num_tokens" in record else ids.shape[0]
        if ids.shape != (n, spec.top_k):
            raise TraceError(f"{at}: top_indices has shape {ids.shape}, expected "
                             f"({n}, {spec.top_k}) from num_tokens and top_k")
        entry: dict[str, Any] = {"num_tokens": n, "ids": ids}
        if "top_probs" in record:
            probs = _matrix(record, "top_probs", at, np.float32, spec.top_k)
            if probs.shape != ids.shape:
                raise TraceError(f"{at}: top_probs has shape {probs.shape}, top_indices "
                                 f"{ids.shape}")
            entry["probs"] = probs
        present = [f for f in _TOKEN_FIELDS if f in record]
        if present:
            if len(present) != len(_TOKEN_FIELDS):
                raise TraceError(f"{at}: give all of request_id, position, phase or none")
            entry["tokens"] = {f: _vector(record, f, n, at) for f in _TOKEN_FIELDS}
        moe = block_to_moe[layer]
        if moe in steps.setdefault(step, {}):
            raise TraceError(f"{at}: a second record for step {step}, layer {layer}")
        steps[step][moe] = entry
    return skipped


def _int_field(record: dict[str, Any], name: str, at: str) -> int:
    if name not in record:
        raise TraceError(f"{at}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TraceError(f"{at}: field {name!r} must be an integer, got {value!r}"[:200])
    return value


def _matrix(record: dict[str, Any], name: str, at: str, dtype: type, width: int) -> np.ndarray:
    """A ``[num_tokens, width]`` list of lists as a numpy array of ``dtype``."""
    if name not in record:
        raise TraceError(f"{at}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise TraceError(f"{at}: field {name!r} must be a [num_tokens, topk] list of lists")
    if dtype is np.int64 and not _all_ints(value):
        raise TraceError(f"{at}: field {name!r} must hold integers")
    if not value:
        return np.empty((0, width), dtype)
    try:
        array = np.array(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise TraceError(f"{at}: field {name!r} must be a list of equal-length lists of "
                         f"numbers") from None
    if array.ndim != 2:
        raise TraceError(f"{at}: field {name!r} must be a [num_tokens, topk] list of lists")
    return array


def _all_ints(value: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for row in value for v in row)


def _vector(record: dict[str, Any], name: str, n: int, at: str) -> np.ndarray:
    value = record[name]
    if not isinstance(value, list) or len(value) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TraceError(f"{at}: field {name!r} must be a list of {n} integers")
    return np.array(value, dtype=np.int64)


def export_megatron(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as Megatron-Core router-trace JSONL, one step per run of consecutive rows
    of the same request, one record per step and MoE layer (``layer`` = transformer block
    number), with ``top_probs``, ``request_id``, ``position`` and ``phase`` added so that the
    import restores the trace exactly."""
    spec = trace.spec
    path = Path(path)
    rid = trace.request_id
    cuts = np.flatnonzero(rid[1:] != rid[:-1]) + 1 if trace.num_tokens else np.empty(0, int)
    bounds = np.concatenate([[0], cuts, [trace.num_tokens]]).astype(np.int64)

    def write(handle) -> None:
        for step, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if hi <= lo:
                continue
            tokens = {"request_id": rid[lo:hi].tolist(),
                      "position": trace.position[lo:hi].tolist(),
                      "phase": trace.phase[lo:hi].tolist()}
            for moe, block in enumerate(spec.moe_layer_indices):
                record = {"step": step, "stage": "pre_dispatch", "block": "decoder",
                          "layer": block, "rank": 0, "num_tokens": int(hi - lo),
                          "topk": spec.top_k,
                          "top_indices": trace.expert_ids[lo:hi, moe].tolist(),
                          "top_probs": trace.gate_weights[lo:hi, moe].tolist(), **tokens}
                handle.write((json.dumps(record) + "\n").encode())

    return c.atomic_write(path, write)


def _all_or_none(values: list[Any], before: bool | None, what: str, where: str) -> bool:
    """Whether the optional field ``what`` is present: in every record of every step, or in none.

    ``values`` are one step's per-layer values (None where absent); ``before`` is the answer for
    the earlier steps (None for the first step)."""
    present = [v is not None for v in values]
    has = all(present)
    if any(present) != has or (before is not None and has != before):
        raise TraceError(f"{where}: {what} must be given for every record or for none")
    return has
