"""Megatron-Core router traces (JSONL, one record per step and layer) to and from traces.

Megatron-Core's router tracer (``megatron/core/transformer/moe/router_trace.py``, enabled with
``--moe-routing-trace-path``) writes ``router_trace_rank{R}.jsonl`` per rank, one JSON object per
line::

    {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 3, "rank": 0,
     "num_tokens": 128, "topk": 2, "top_indices": [[5, 1], [0, 7], ...]}

Two paths write it, and they number layers differently:

- the **hook path** (a forward hook on every ``TopKRouter``, training and inference): ``layer``
  is ``N`` of the module name ``decoder.layers.N``, the block's index *within its pipeline stage*
  (0-based); in training every forward of a router appends a record, so a step holds one record
  per micro-batch, plus a repeat of each when activation recompute re-runs the router during
  the backward pass; in inference a step is one forward of the engine;
- the **sink path** (``RouterTracer.record_indices``, fed by routing replay in inference): one
  record per layer and engine step with ``layer`` = the router's ``layer_number``, Megatron's
  *1-based global* block number (or the 0-based MoE index when routing replay had no layer
  numbers).

This module reads either (:func:`import_megatron`, options in its docstring), merges the files of
several ranks (pipeline stages, tensor/sequence-parallel ranks), and turns steps into requests
(:mod:`traces.importers.megatron_steps`). It also accepts four per-record fields of its own
(written by :func:`export_megatron`, ignored by Megatron): ``top_probs`` ``[num_tokens, topk]``
gate weights and ``request_id``, ``position``, ``phase`` ``[num_tokens]``.
See ``traces/importers/README.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.importers.megatron_steps import StepRecord, steps_to_trace
from moe_offload_lab.traces.spec import ModelSpec

TOKEN_FIELDS = ("request_id", "position", "phase")
LAYER_IDS = ("auto", "local0", "global1", "moe0")
MODES = ("auto", "training", "inference")


@dataclass
class _RankFile:
    """One rank's records: ``records[(step, layer)]`` in file order."""

    path: Path
    rank: int | None
    records: dict[tuple[int, int], list[StepRecord]] = field(default_factory=dict)
    skipped: int = 0
    first_line: dict[int, str] = field(default_factory=dict)  # layer -> where it first appears


def import_megatron(path: str | Path | Sequence[str | Path], model: str | ModelSpec, *,
                    mode: str = "auto", micro_batch_size: int = 1, tensor_parallel: int = 1,
                    sequence_parallel: bool = False, stage_layers: Sequence[int] | None = None,
                    layer_ids: str = "auto") -> Trace:
    """Read one or several Megatron-Core router-trace JSONL files as a trace of ``model``.

    ``path``: one file, or the files of every rank of **one data-parallel replica** (ranks are
    ordered by their ``rank`` field; Megatron's default rank order puts tensor-parallel ranks
    innermost and pipeline stages outermost, so ``tensor_parallel`` consecutive files form one
    stage). ``sequence_parallel``: the tensor-parallel ranks of a stage each hold a slice of the
    tokens (concatenated in rank order); otherwise they hold the same tokens and must agree.
    ``stage_layers``: transformer blocks per pipeline stage (default: an even split), needed to
    place hook-path layer numbers, which restart at 0 in every stage. ``layer_ids``: ``local0``
    (hook path), ``global1`` (sink path, Megatron layer numbers), ``moe0`` (sink path without
    layer numbers) or ``auto`` (the first that maps every record to a MoE block and covers them
    all). ``mode``: ``training`` (several micro-batches per step, recompute repeats dropped,
    ``micro_batch_size`` sequences per micro-batch), ``inference`` (one engine step per step,
    prefill and decode steps told apart) or ``auto`` (training when a step holds several records
    of a layer or every record has the same token count).
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    spec = c.load_spec(model)
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    _check_options(mode, micro_batch_size, tensor_parallel, layer_ids, len(paths), where)
    files = sorted((_read_file(p, spec) for p in paths), key=lambda f: (f.rank is None, f.rank))
    ranks = [f.rank for f in files if f.rank is not None]
    if len(set(ranks)) != len(ranks):
        raise TraceError(f"{where}: two files hold records of the same rank")
    if not any(f.records for f in files):
        raise TraceError(f"{where}: no decoder router record")
    stages = [files[s:s + tensor_parallel] for s in range(0, len(files), tensor_parallel)]
    numbering, maps = _layer_maps(stages, spec, stage_layers, layer_ids, where)
    merged: dict[tuple[int, int], list[StepRecord]] = {}  # (step, MoE layer) -> micro-batches
    duplicates = 0
    for stage, layer_map in zip(stages, maps, strict=True):
        per_rank = []
        for f in stage:
            kept, dropped = _drop_repeats(f.records)
            per_rank.append(kept)
            duplicates += dropped
        for (step, layer), records in _merge_tensor_parallel(per_rank, sequence_parallel,
                                                             where).items():
            merged[(step, layer_map[layer])] = records
    multi = any(len(v) > 1 for f in files for v in f.records.values())
    trace_mode, reason = _resolve_mode(mode, multi, merged)
    prov_details = {
        "files": [p.name for p in paths], "ranks": ranks, "layer_ids": numbering,
        "mode": trace_mode, "mode_reason": reason,
        "recompute_repeats_dropped": duplicates,
        "skipped_non_decoder_records": sum(f.skipped for f in files),
        "tensor_parallel": tensor_parallel, "sequence_parallel": sequence_parallel,
        "pipeline_stages": len(stages)}
    return steps_to_trace(merged, spec, paths[0], where, trace_mode, micro_batch_size,
                          prov_details)


def _check_options(mode: str, micro_batch_size: int, tensor_parallel: int, layer_ids: str,
                   n_files: int, where: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"megatron mode must be one of {', '.join(MODES)}, got {mode!r}")
    if layer_ids not in LAYER_IDS:
        raise ConfigError(f"megatron layer ids must be one of {', '.join(LAYER_IDS)}, got "
                          f"{layer_ids!r}")
    for name, value in (("micro_batch_size", micro_batch_size),
                        ("tensor_parallel", tensor_parallel)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if n_files % tensor_parallel:
        raise ConfigError(f"{where}: {n_files} rank files are not a whole number of pipeline "
                          f"stages of {tensor_parallel} tensor-parallel ranks")


# ---- reading ------------------------------------------------------------------------------------
def _read_file(path: Path, spec: ModelSpec) -> _RankFile:
    c.require_file(path)
    out = _RankFile(path, None)
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    _read_line(line, f"{path}:{number}", spec, out)
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read ({c.first_line(exc)})") from None
    return out


def _read_line(line: str, at: str, spec: ModelSpec, out: _RankFile) -> None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{at}: malformed JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise TraceError(f"{at}: expected a JSON object")
    if record.get("block", "decoder") != "decoder" or "mtp_idx" in record:
        out.skipped += 1  # multi-token-prediction heads are not decoder layers
        return
    step, layer = _int_field(record, "step", at), _int_field(record, "layer", at)
    if "rank" in record:
        rank = _int_field(record, "rank", at)
        if out.rank is not None and rank != out.rank:
            raise TraceError(f"{at}: rank {rank} in a file of rank {out.rank}")
        out.rank = rank
    topk = _int_field(record, "topk", at) if "topk" in record else spec.top_k
    if topk != spec.top_k:
        raise TraceError(f"{at}: topk={topk}, but model {spec.name!r} has top_k={spec.top_k}")
    ids = _matrix(record, "top_indices", at, np.int64, spec.top_k)
    n = _int_field(record, "num_tokens", at) if "num_tokens" in record else ids.shape[0]
    if ids.shape != (n, spec.top_k):
        raise TraceError(f"{at}: top_indices has shape {ids.shape}, expected "
                         f"({n}, {spec.top_k}) from num_tokens and top_k")
    entry = StepRecord(ids=ids, at=at)
    if "top_probs" in record:
        entry.probs = _matrix(record, "top_probs", at, np.float32, spec.top_k)
        if entry.probs.shape != ids.shape:
            raise TraceError(f"{at}: top_probs has shape {entry.probs.shape}, top_indices "
                             f"{ids.shape}")
    present = [f for f in TOKEN_FIELDS if f in record]
    if present:
        if len(present) != len(TOKEN_FIELDS):
            raise TraceError(f"{at}: give all of request_id, position, phase or none")
        entry.tokens = {f: _vector(record, f, n, at) for f in TOKEN_FIELDS}
    out.records.setdefault((step, layer), []).append(entry)
    out.first_line.setdefault(layer, at)


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
    if dtype is np.int64 and not all(isinstance(v, int) and not isinstance(v, bool)
                                     for row in value for v in row):
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


def _vector(record: dict[str, Any], name: str, n: int, at: str) -> np.ndarray:
    value = record[name]
    if not isinstance(value, list) or len(value) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TraceError(f"{at}: field {name!r} must be a list of {n} integers")
    return np.array(value, dtype=np.int64)


# ---- merging ranks ------------------------------------------------------------------------------
def _layer_maps(stages: list[list[_RankFile]], spec: ModelSpec,
                stage_layers: Sequence[int] | None, choice: str, where: str
                ) -> tuple[str, list[dict[int, int]]]:
    """Per stage, record ``layer`` -> MoE layer index, under the chosen (or first fitting)
    numbering; TraceError when none maps every record onto a MoE block and covers them all."""
    stage_sets = [{layer for f in stage for (_, layer) in f.records} for stage in stages]
    block_to_moe = {b: i for i, b in enumerate(spec.moe_layer_indices)}
    offsets = _stage_offsets(spec, len(stage_sets), stage_layers, where)
    rules = {"local0": lambda s, layer: block_to_moe.get(offsets[s] + layer),
             "global1": lambda s, layer: block_to_moe.get(layer - 1),
             "moe0": lambda s, layer: layer if 0 <= layer < spec.num_moe_layers else None}
    tried = []
    for name in (LAYER_IDS[1:] if choice == "auto" else (choice,)):
        maps = [{layer: rules[name](s, layer) for layer in layers}
                for s, layers in enumerate(stage_sets)]
        bad = [(s, layer) for s, m in enumerate(maps) for layer, moe in sorted(m.items())
               if moe is None]
        covered = {moe for m in maps for moe in m.values() if moe is not None}
        if not bad and covered == set(range(spec.num_moe_layers)):
            return name, maps
        tried.append((name, bad, covered))
    name, bad, covered = tried[0]
    if bad:
        s, layer = bad[0]
        at = next(f.first_line[layer] for f in stages[s] if layer in f.first_line)
        hint = " (nor do 1-based global or MoE-index layer numbers fit)" if choice == "auto" \
            else ""
        return _raise(f"{at}: layer {layer} is not a MoE block of model {spec.name!r} (MoE "
                      f"blocks {spec.moe_layer_indices[0]}..{spec.moe_layer_indices[-1]}, layer "
                      f"ids {name}){hint}")
    missing = sorted(set(range(spec.num_moe_layers)) - covered)
    return _raise(f"{where}: no step has a record for MoE layer (block) "
                  f"{spec.moe_layer_indices[missing[0]]} (layer ids {name})")


def _raise(message: str) -> Any:
    raise TraceError(message)


def _stage_offsets(spec: ModelSpec, stages: int, stage_layers: Sequence[int] | None,
                   where: str) -> list[int]:
    if stage_layers is None:
        if spec.num_layers % stages:
            raise ConfigError(f"{where}: {spec.num_layers} blocks do not split evenly into "
                              f"{stages} pipeline stages; give the blocks per stage")
        sizes = [spec.num_layers // stages] * stages
    else:
        sizes = list(stage_layers)
        if len(sizes) != stages or sum(sizes) != spec.num_layers or min(sizes) < 1:
            raise ConfigError(f"{where}: blocks per stage {sizes} must be {stages} positive "
                              f"numbers adding up to the model's {spec.num_layers} blocks")
    return [int(v) for v in np.cumsum([0] + sizes[:-1])]


def _drop_repeats(records: dict[tuple[int, int], list[StepRecord]]
                  ) -> tuple[dict[tuple[int, int], list[StepRecord]], int]:
    """Drop records that repeat an earlier record of the same step and layer exactly:
    activation recompute runs a router again on the same tokens during the backward pass."""
    kept, dropped = {}, 0
    for key, entries in records.items():
        seen, out = set(), []
        for entry in entries:
            fingerprint = (entry.ids.shape, entry.ids.tobytes())
            if fingerprint in seen:
                dropped += 1
                continue
            seen.add(fingerprint)
            out.append(entry)
        kept[key] = out
    return kept, dropped


def _merge_tensor_parallel(per_rank: list[dict[tuple[int, int], list[StepRecord]]],
                           sequence_parallel: bool, where: str
                           ) -> dict[tuple[int, int], list[StepRecord]]:
    """One stage's records from its tensor-parallel ranks: with sequence parallelism each rank
    holds a slice of every micro-batch's tokens (concatenated in rank order), otherwise the ranks
    hold the same tokens (the first is kept, the others must agree)."""
    first = per_rank[0]
    for rank, other in enumerate(per_rank[1:], start=1):
        if set(other) != set(first) or any(len(other[k]) != len(first[k]) for k in first):
            raise TraceError(f"{where}: tensor-parallel rank {rank} of a stage has other steps, "
                             f"layers or micro-batches than rank 0")
    if len(per_rank) == 1:
        return first
    merged = {}
    for key, entries in first.items():
        out = []
        for m, entry in enumerate(entries):
            parts = [rank[key][m] for rank in per_rank]
            if sequence_parallel:
                out.append(StepRecord.concatenate(parts))
            elif any(not np.array_equal(p.ids, entry.ids) for p in parts[1:]):
                raise TraceError(f"{where}: tensor-parallel ranks disagree at step {key[0]}, "
                                 f"layer {key[1]}; if each holds a slice of the sequence, say "
                                 f"so (sequence parallel)")
            else:
                out.append(entry)
        merged[key] = out
    return merged


def _resolve_mode(mode: str, multi: bool, merged: dict[tuple[int, int], list[StepRecord]]
                  ) -> tuple[str, str]:
    if mode != "auto":
        return mode, "given"
    if multi:
        return "training", "a step holds several records of one layer (micro-batches)"
    sizes = {e.ids.shape[0] for entries in merged.values() for e in entries}
    if len(sizes) == 1 and len({step for step, _ in merged}) > 1:
        return "training", "every step has the same number of tokens"
    return "inference", "one record per step and layer, token counts vary"


# ---- export -------------------------------------------------------------------------------------
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
