"""Megatron-Core router-trace steps as trace rows: requests, positions and phases.

:func:`steps_to_trace` receives, per ``(step, MoE layer)``, the step's records in order (one per
micro-batch in training, one per engine step in inference) after the ranks were merged, and builds
the trace. Megatron's records say nothing about which sequence a token belongs to, so:

- **project fields**: when records carry ``request_id``, ``position`` and ``phase`` (this
  project's export), they are used as they are;
- **training**: each micro-batch record holds ``micro_batch_size`` sequences in Megatron's
  flattened ``[s * b]`` order (token ``i`` is sequence ``i % b``, position ``i // b``); every
  sequence becomes a request of prefill tokens (a training forward processes whole sequences);
- **inference**: the steps are told apart as prefill or decode. A step whose token count exceeds
  the decode slots still open is the prefill of a new *wave* of requests; the next step's count is
  the wave's number of requests ``B``, its prefill tokens are split evenly among them (the prompt
  lengths are not in the file), and every later step with at most as many tokens as open slots is
  a decode step, token ``j`` continuing request ``j`` (requests that finished are taken to be the
  last ones). The token set of every step is exact, so a static batch of ``B`` requests
  (``moe-sim batch=B``) replays Megatron's steps; the split of a prefill among requests and the
  identity of requests across decode steps are reconstructed. A continuous-batching step that
  mixes new prompts with decode tokens becomes a prefill step, and a chunked prefill whose chunks
  are not larger than the open slots is read as decode steps (the provenance says how many waves
  and slots were found).

Reconstructed rows are grouped by request (requests in order of first appearance), as the
simulator's batchers expect; the interleaving of requests inside an engine step is not kept.
Records with the project's fields keep the file's row order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import TraceError
from moe_offload_lab.traces.format import DECODE, PREFILL, Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.spec import ModelSpec

_TOKEN_FIELDS = ("request_id", "position", "phase")


@dataclass
class StepRecord:
    """One router record: ``ids`` [n, k], optional ``probs`` [n, k] and token fields [n]."""

    ids: np.ndarray
    at: str
    probs: np.ndarray | None = None
    tokens: dict[str, np.ndarray] | None = field(default=None)

    @staticmethod
    def concatenate(parts: list[StepRecord]) -> StepRecord:
        """The records of a sequence-parallel group, tokens in rank order."""
        probs = [p.probs for p in parts]
        tokens = [p.tokens for p in parts]
        return StepRecord(
            ids=np.concatenate([p.ids for p in parts]), at=parts[0].at,
            probs=np.concatenate(probs) if all(p is not None for p in probs) else None,
            tokens=({f: np.concatenate([t[f] for t in tokens]) for f in _TOKEN_FIELDS}
                    if all(t is not None for t in tokens) else None))


@dataclass
class _Rows:
    """Rows being assembled, in the order they will appear."""

    ids: list[np.ndarray] = field(default_factory=list)  # [n, L, k] blocks
    probs: list[np.ndarray | None] = field(default_factory=list)
    rid: list[np.ndarray] = field(default_factory=list)
    pos: list[np.ndarray] = field(default_factory=list)
    phase: list[np.ndarray] = field(default_factory=list)


def steps_to_trace(merged: dict[tuple[int, int], list[StepRecord]], spec: ModelSpec,
                   path: Path, where: str, mode: str, micro_batch_size: int,
                   details: dict[str, Any]) -> Trace:
    """Build the trace from the merged records (see the module docstring)."""
    steps = _stack_steps(merged, spec, where)  # step -> micro-batch records, each [n, L] of rows
    have_gates = _all_or_none([r.probs is not None for recs in steps.values() for r in recs],
                              "top_probs", where)
    have_tokens = _all_or_none([r.tokens is not None for recs in steps.values() for r in recs],
                               "request_id/position/phase", where)
    if have_tokens:
        rows, how = _given_rows(steps), "from the request_id/position/phase fields"
    elif mode == "training":
        rows, how = _training_rows(steps, micro_batch_size, where), (
            f"each micro-batch holds {micro_batch_size} sequence(s) in Megatron's [s * b] token "
            f"order; every sequence is one request of prefill tokens")
        details["micro_batch_size"] = micro_batch_size
    else:
        several = [step for step, mbs in steps.items() if len(mbs) > 1]
        if several:
            raise TraceError(f"{where}: step {several[0]} holds {len(steps[several[0]])} records "
                             f"per layer, but an inference trace has one per engine step (a "
                             f"training trace? use the training mode)")
        rows, waves = _inference_rows(steps)
        how = ("inference steps: prefill waves and decode steps told apart by token counts; a "
               "wave's prefill split evenly among its requests; token j of a decode step "
               "continues request j (see traces/importers/megatron_steps.py)")
        details["waves"] = waves
        details["replay_with_static_batch"] = max(w["requests"] for w in waves)
    ids = c.check_expert_ids(np.concatenate(rows.ids), spec, where)
    gates = np.concatenate(rows.probs) if have_gates else c.uniform_gates(ids.shape)
    lost = [] if have_gates else ["gate weights"]
    if not have_tokens:
        lost.append("which sequence each token belongs to (reconstructed, see 'requests')")
    prov = c.provenance(
        "megatron-import", "moe_offload_lab.traces.importers.megatron", path, spec,
        gates="from top_probs" if have_gates
        else "filled in: uniform 1/k (Megatron's tracer records no gate weights)",
        requests=how, steps=len(steps), lost=lost, **details)
    request_id, position, phase = (np.concatenate(rows.rid), np.concatenate(rows.pos),
                                   np.concatenate(rows.phase))
    order = np.arange(request_id.size)  # the project's own fields: rows as written
    if not have_tokens:  # reconstructed requests: grouped, as the simulator's batchers expect
        order = np.argsort(_first_appearance_rank(request_id), kind="stable")
    return c.build_trace(spec, request_id[order], position[order], phase[order], ids[order],
                         gates[order], prov, where)


def _first_appearance_rank(request_id: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(request_id, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


@dataclass
class _MicroBatch:
    """One micro-batch (or engine step) across all MoE layers."""

    ids: np.ndarray  # [n, L, k]
    probs: np.ndarray | None  # [n, L, k]
    tokens: dict[str, np.ndarray] | None


def _stack_steps(merged: dict[tuple[int, int], list[StepRecord]], spec: ModelSpec,
                 where: str) -> dict[int, list[_MicroBatch]]:
    """Per step (ascending), its micro-batches with every MoE layer stacked."""
    out: dict[int, list[_MicroBatch]] = {}
    for step in sorted({s for s, _ in merged}):
        per_layer = []
        for moe, block in enumerate(spec.moe_layer_indices):
            if (step, moe) not in merged:
                raise TraceError(f"{where}: step {step} has no record for MoE layer (block) "
                                 f"{block}")
            per_layer.append(merged[(step, moe)])
        counts = [len(records) for records in per_layer]
        if len(set(counts)) != 1:
            layer = int(np.argmax(np.array(counts) != counts[0]))
            raise TraceError(f"{where}: step {step} has {counts[layer]} micro-batch record(s) "
                             f"for MoE layer (block) {spec.moe_layer_indices[layer]} but "
                             f"{counts[0]} for block {spec.moe_layer_indices[0]}")
        out[step] = [_micro_batch([records[m] for records in per_layer], step, where)
                     for m in range(counts[0])]
    return out


def _micro_batch(records: list[StepRecord], step: int, where: str) -> _MicroBatch:
    n = records[0].ids.shape[0]
    if any(r.ids.shape[0] != n for r in records):
        raise TraceError(f"{where}: step {step} has layers with different num_tokens "
                         f"({records[0].at} has {n})")
    probs = [r.probs for r in records]
    _all_or_none([p is not None for p in probs], "top_probs", where)
    tokens = records[0].tokens
    _all_or_none([r.tokens is not None for r in records], "request_id/position/phase", where)
    if tokens is not None and any(any(not np.array_equal(r.tokens[f], tokens[f])
                                      for f in _TOKEN_FIELDS) for r in records[1:]):
        raise TraceError(f"{where}: step {step}: layers disagree on request_id, position or "
                         f"phase")
    return _MicroBatch(np.stack([r.ids for r in records], axis=1),
                       np.stack(probs, axis=1) if all(p is not None for p in probs) else None,
                       tokens)


def _all_or_none(present: list[bool], what: str, where: str) -> bool:
    if any(present) and not all(present):
        raise TraceError(f"{where}: {what} must be given for every record or for none")
    return bool(present) and all(present)


def _add(rows: _Rows, mb: _MicroBatch, order: np.ndarray, rid: np.ndarray, pos: np.ndarray,
         phase: np.ndarray) -> None:
    rows.ids.append(mb.ids[order])
    rows.probs.append(None if mb.probs is None else mb.probs[order])
    rows.rid.append(rid)
    rows.pos.append(pos)
    rows.phase.append(phase)


def _given_rows(steps: dict[int, list[_MicroBatch]]) -> _Rows:
    rows = _Rows()
    for mbs in steps.values():
        for mb in mbs:
            t = mb.tokens
            _add(rows, mb, np.arange(mb.ids.shape[0]), t["request_id"], t["position"],
                 t["phase"])
    return rows


def _training_rows(steps: dict[int, list[_MicroBatch]], b: int, where: str) -> _Rows:
    rows, next_request = _Rows(), 0
    for step, mbs in steps.items():
        for m, mb in enumerate(mbs):
            n = mb.ids.shape[0]
            if n % b:
                raise TraceError(f"{where}: step {step}, micro-batch {m} holds {n} tokens, not "
                                 f"a multiple of the micro-batch size {b}")
            token = np.arange(n)
            sequence, position = token % b, token // b  # Megatron flattens [s, b] s-major
            order = np.lexsort((position, sequence))  # sequence by sequence
            _add(rows, mb, order, next_request + sequence[order], position[order],
                 np.full(n, PREFILL))
            next_request += b
    return rows


def _inference_rows(steps: dict[int, list[_MicroBatch]]) -> tuple[_Rows, list[dict[str, int]]]:
    """Engine steps -> requests (see the module docstring); returns the rows and, per wave, its
    first step, requests and decode steps."""
    rows, waves = _Rows(), []
    ordered = [(step, mbs[0]) for step, mbs in steps.items()]  # inference: one record per step
    base, open_slots, lengths = 0, 0, np.zeros(0, np.int64)
    pending: tuple[_MicroBatch, dict[str, int]] | None = None  # a prefill awaiting its width
    for step, mb in ordered:
        n = mb.ids.shape[0]
        if n == 0:
            continue
        if pending is not None and n <= pending[0].ids.shape[0]:
            lengths = _split_prefill(rows, pending[0], base, n)
            pending[1]["requests"] = n
            open_slots, pending = n, None
        if pending is None and 0 < n <= open_slots:  # a decode step of the open wave
            slots = np.arange(n)
            _add(rows, mb, slots, base + slots, lengths[:n].copy(), np.full(n, DECODE))
            lengths[:n] += 1
            open_slots = n
            waves[-1]["decode_steps"] += 1
            continue
        if pending is not None:  # the previous wave ended with its prefill: one request
            _split_prefill(rows, pending[0], base, 1)
        base += int(waves[-1]["requests"]) if waves else 0
        waves.append({"first_step": int(step), "requests": 1, "decode_steps": 0})
        pending, open_slots = (mb, waves[-1]), 0
    if pending is not None:
        _split_prefill(rows, pending[0], base, 1)
    return rows, waves


def _split_prefill(rows: _Rows, mb: _MicroBatch, base: int, requests: int) -> np.ndarray:
    """The prefill step ``mb`` as ``requests`` contiguous prompts of nearly equal length (the
    first ``n % requests`` one token longer); returns the prompt lengths [requests]."""
    n = mb.ids.shape[0]
    lengths = np.full(requests, n // requests, np.int64)
    lengths[: n % requests] += 1
    request = np.repeat(np.arange(requests), lengths)
    position = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    _add(rows, mb, np.arange(n), base + request, position, np.full(n, PREFILL))
    return lengths
