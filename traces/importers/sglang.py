"""SGLang expert-distribution dumps (``torch.save`` dicts) to traces.

SGLang's ``ExpertDistributionRecorder`` (``python/sglang/srt/eplb/expert_distribution.py`` in
sgl-project/sglang; started and dumped through ``/start_expert_distribution_record`` and
``/dump_expert_distribution_record``, mode ``--expert-distribution-recorder-mode``) writes
``expert_distribution_recorder_{time}[_{rank}].pt`` in one of two shapes:

- ``stat`` / ``stat_approx`` (``_StatAccumulator``): ``{"rank", "logical_count",
  "average_utilization_rate_over_window"}``; ``logical_count`` int ``[steps, layers, logical
  experts]``, one row per forward pass (a circular buffer of ``--expert-distribution-recorder-
  buffer-size`` rows, unused rows all zero; once it wraps, rows are no longer in time order),
  summed over all ranks (``all_reduce``). Only counts: the tokens are reconstructed
  (:mod:`traces.importers.counts`), one request per non-empty forward pass. Per-pass, per-layer
  counts are exact; token-level structure is synthetic. With plain tensor parallelism every rank
  routes the same tokens, so the sum counts each token once per rank: give ``ranks_summed``.
- ``per_token`` / ``per_pass`` (``_DetailAccumulator``, one file per rank): ``{"records",
  "last_physical_to_logical_map"}``. Each record is one forward pass: ``forward_pass_id``,
  ``rank``, ``input_ids``, ``positions`` (per token), ``extend_seq_lens`` (per request of an
  extend batch, ``None`` in decode), ``forward_mode``, ``global_physical_count`` ``[layers,
  physical experts]`` and, in ``per_token`` mode, ``topk_ids_of_layer`` ``[layers, tokens, 8]``
  of **physical** expert ids, ``-1`` beyond the model's top-k and in dense layers.

Per-token records give real routing: physical ids are mapped to logical experts through
``last_physical_to_logical_map`` (the map at dump time; EPLB may have changed it while
recording). Requests are not named in the dump; they are linked across forward passes by
position: a token segment starting at position ``p`` continues the open request that ended at
``p - 1`` (the earliest such one), otherwise it starts a request (at ``p``, which is above 0 when
a cached prefix was not recomputed). Decode passes (``extend_seq_lens`` absent) and length-1
segments of mixed passes that continue a request are decode; the rest is prefill. ``per_pass``
records hold only counts and are reconstructed like ``stat``. Layers are SGLang's decoder layer
ids (every block; dense blocks hold nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import DECODE, PREFILL, Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.importers.counts import count_matrix, counts_trace
from moe_offload_lab.traces.spec import ModelSpec

# ForwardMode in python/sglang/srt/model_executor/forward_batch_info.py (IntEnum, auto() from 1)
EXTEND, DECODE_MODE, MIXED, IDLE = 1, 2, 3, 4
_SOURCE = "sglang-import"


def import_sglang(path: str | Path, model: str | ModelSpec, *, ranks_summed: int = 1) -> Trace:
    """Read an SGLang expert-distribution dump as a trace of ``model`` (see the module doc).

    ``ranks_summed`` (``stat`` dumps only): how many ranks routed the same tokens and were summed
    (the tensor-parallel size without data-parallel attention); counts are divided by it.
    """
    path = Path(path)
    spec = c.load_spec(model)
    where = str(path)
    if isinstance(ranks_summed, bool) or not isinstance(ranks_summed, int) or ranks_summed < 1:
        raise ConfigError(f"ranks_summed must be a positive integer, got {ranks_summed!r}")
    dump = c.load_torch_file(path, "an SGLang expert-distribution dump")
    if not isinstance(dump, dict):
        raise TraceError(f"{where}: not an SGLang expert-distribution dump (expected a dict, "
                         f"got {type(dump).__name__})")
    if "logical_count" in dump:
        return _stat(dump, spec, path, ranks_summed)
    if ranks_summed != 1:
        raise ConfigError(f"{where}: ranks_summed applies to stat dumps (logical_count) only")
    if isinstance(dump.get("records"), list) and "last_physical_to_logical_map" in dump:
        return _detail(dump, spec, path)
    raise TraceError(f"{where}: not an SGLang expert-distribution dump (no 'logical_count', no "
                     f"'records' with 'last_physical_to_logical_map')")


# ---- stat ---------------------------------------------------------------------------------------
def _stat(dump: dict[str, Any], spec: ModelSpec, path: Path, ranks_summed: int) -> Trace:
    where = str(path)
    counts = count_matrix(c.to_numpy(dump["logical_count"], "logical_count", where), spec,
                          "logical_count", where)  # [steps, L, E]
    if ranks_summed > 1:
        if (counts % ranks_summed).any():
            raise TraceError(f"{where}: logical_count is not a multiple of ranks_summed="
                             f"{ranks_summed}; the ranks did not all route the same tokens")
        counts //= ranks_summed
    return counts_trace(spec, counts, np.arange(counts.shape[0]), path, _SOURCE, __name__,
                        "forward pass", dump_mode="stat (logical_count)",
                        ranks_summed=ranks_summed,
                        order="buffer rows in order; a wrapped circular buffer is rotated")


# ---- per_token / per_pass -----------------------------------------------------------------------
def _physical_map(dump: dict[str, Any], spec: ModelSpec, where: str) -> np.ndarray:
    """``last_physical_to_logical_map`` ``[layers, P]`` reduced to the MoE layers ``[L, P]``."""
    table = c.to_numpy(dump["last_physical_to_logical_map"], "last_physical_to_logical_map",
                       where)
    if table.ndim != 2 or table.dtype.kind not in "iu":
        raise TraceError(f"{where}: last_physical_to_logical_map must be an integer [layers, "
                         f"physical experts] array, got {table.dtype} {table.shape}")
    table = c.to_moe_layers(table.astype(np.int64), spec, where, axis=0)
    if table.size and (table.min() < 0 or table.max() >= spec.num_experts):
        raise TraceError(f"{where}: last_physical_to_logical_map names a logical expert outside "
                         f"[0, {spec.num_experts}) of model {spec.name!r}")
    return table


def _detail(dump: dict[str, Any], spec: ModelSpec, path: Path) -> Trace:
    where = str(path)
    table = _physical_map(dump, spec, where)  # [L, P]
    records = [r for r in dump["records"] if isinstance(r, dict)]
    if len(records) != len(dump["records"]):
        raise TraceError(f"{where}: every record must be a dict")
    records.sort(key=lambda r: r.get("forward_pass_id", 0))
    if records and all("topk_ids_of_layer" not in r for r in records):
        return _per_pass(records, table, spec, path)
    linker = _Linker()
    skipped = 0
    for r in records:
        mode = r.get("forward_mode")
        if mode not in (EXTEND, DECODE_MODE, MIXED):  # idle, speculative verify/draft passes
            skipped += 1
            continue
        at = f"{where}: forward pass {r.get('forward_pass_id', '?')}"
        ids = _logical_ids(r, table, spec, at)  # [n, L, k]
        positions = c.to_numpy(r.get("positions"), "positions", at).astype(np.int64).reshape(-1)
        if positions.shape[0] != ids.shape[0]:
            raise TraceError(f"{at}: {positions.shape[0]} positions for {ids.shape[0]} tokens")
        linker.add_pass(ids, positions, _segments(r, ids.shape[0], at), mode, at)
    if not linker.rows:
        raise TraceError(f"{where}: no forward pass with tokens to import")
    return linker.trace(spec, path, skipped)


def _logical_ids(record: dict[str, Any], table: np.ndarray, spec: ModelSpec,
                 at: str) -> np.ndarray:
    """``topk_ids_of_layer`` [layers, n, W] physical -> [n, L, k] logical."""
    raw = c.to_numpy(record.get("topk_ids_of_layer"), "topk_ids_of_layer", at)
    if raw.ndim != 3 or raw.dtype.kind not in "iu":
        raise TraceError(f"{at}: topk_ids_of_layer must be an integer [layers, tokens, width] "
                         f"array, got {raw.dtype} {raw.shape}")
    k = spec.top_k
    if raw.shape[2] < k:
        raise TraceError(f"{at}: topk_ids_of_layer holds {raw.shape[2]} experts per token, "
                         f"model {spec.name!r} picks top_k={k}")
    ids = c.to_moe_layers(raw.astype(np.int64), spec, at, axis=0)  # [L, n, W]
    if (ids[:, :, k:] != -1).any():
        layer, token, _ = np.argwhere(ids[:, :, k:] != -1)[0]
        raise TraceError(f"{at}: token {token}, MoE layer {layer} has more than top_k={k} "
                         f"experts (padding must be -1); wrong model, or shared experts fused "
                         f"into the top-k")
    ids = ids[:, :, :k]
    if ids.size and ids.min() < 0:
        layer, token, _ = np.argwhere(ids < 0)[0]
        raise TraceError(f"{at}: token {token}, MoE layer {layer} has fewer than top_k={k} "
                         f"experts (-1)")
    n_physical = table.shape[1]
    if ids.size and ids.max() >= n_physical:
        layer, token, _ = np.argwhere(ids >= n_physical)[0]
        raise TraceError(f"{at}: physical expert {int(ids[layer, token].max())} at token "
                         f"{token}, MoE layer {layer} is outside the map's {n_physical} physical "
                         f"experts")
    logical = np.take_along_axis(table[:, None, :], ids, axis=2)  # [L, n, k]
    return logical.transpose(1, 0, 2)


def _segments(record: dict[str, Any], n: int, at: str) -> np.ndarray:
    """Token counts of the requests of one pass: ``extend_seq_lens``, or one each (decode)."""
    lens = record.get("extend_seq_lens")
    if lens is None:
        return np.ones(n, np.int64)
    lens = c.to_numpy(lens, "extend_seq_lens", at).astype(np.int64).reshape(-1)
    if (lens < 0).any() or int(lens.sum()) != n:
        raise TraceError(f"{at}: extend_seq_lens add up to {int(lens.sum())}, the pass has {n} "
                         f"tokens")
    return lens[lens > 0]


class _Linker:
    """Links the token segments of successive passes into requests by position."""

    def __init__(self) -> None:
        self.open: dict[int, list[int]] = {}  # last position -> open requests, earliest first
        self.next_request = 0
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # ids, pos, phase, r

    def add_pass(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray, mode: int,
                 at: str) -> None:
        ended: dict[int, list[int]] = {}
        start = 0
        for length in lengths.tolist():
            pos = positions[start:start + length]
            if (np.diff(pos) != 1).any():
                raise TraceError(f"{at}: the positions of one request are not consecutive "
                                 f"({pos.tolist()[:6]})")
            waiting = self.open.get(int(pos[0]) - 1)
            if waiting:
                request, continues = waiting.pop(0), True
            else:
                request, continues = self.next_request, False
                self.next_request += 1
            decode = mode == DECODE_MODE or (mode == MIXED and length == 1 and continues)
            phase = np.full(length, DECODE if decode else PREFILL, np.int8)
            self.rows.append((ids[start:start + length], pos, phase, request))
            ended.setdefault(int(pos[-1]), []).append(request)
            start += length
        for last, requests in ended.items():  # requests of this pass stay open after it
            self.open.setdefault(last, []).extend(requests)

    def trace(self, spec: ModelSpec, path: Path, skipped: int) -> Trace:
        where = str(path)
        requests = np.array([r for *_, r in self.rows], np.int64)
        order = np.argsort(requests, kind="stable")  # rows grouped by request, in pass order
        pick = [self.rows[i] for i in order]
        ids = np.concatenate([p[0] for p in pick])
        rid = np.concatenate([np.full(len(p[1]), p[3], np.int64) for p in pick])
        prov = c.provenance(
            _SOURCE, __name__, path, spec, dump_mode="per_token (topk_ids_of_layer)",
            ids="physical expert ids mapped to logical ones with last_physical_to_logical_map",
            requests="linked across forward passes by position (a segment starting at p "
                     "continues the open request that ended at p - 1); rows grouped by request",
            gates="filled in: uniform 1/k (the dump holds no gate weights)",
            skipped_passes=skipped,
            lost=["gate weights", "request ids (linked by position)",
                  "the interleaving of requests inside a forward pass"])
        return c.build_trace(spec, rid, np.concatenate([p[1] for p in pick]),
                             np.concatenate([p[2] for p in pick]),
                             c.check_expert_ids(ids, spec, where), c.uniform_gates(ids.shape),
                             prov, where)


def _per_pass(records: list[dict[str, Any]], table: np.ndarray, spec: ModelSpec,
              path: Path) -> Trace:
    """``per_pass`` records: physical counts per pass, mapped to logical counts."""
    where = str(path)
    counts, ids = [], []
    for r in records:
        at = f"{where}: forward pass {r.get('forward_pass_id', '?')}"
        physical = c.to_numpy(r.get("global_physical_count"), "global_physical_count", at)
        if physical.ndim != 2:
            raise TraceError(f"{at}: global_physical_count must be [layers, physical experts]")
        physical = c.to_moe_layers(c.integer_array(physical, "global_physical_count", at),
                                   spec, at, axis=0)
        if physical.shape[1] != table.shape[1]:
            raise TraceError(f"{at}: {physical.shape[1]} physical experts, the map has "
                             f"{table.shape[1]}")
        logical = np.zeros((spec.num_moe_layers, spec.num_experts), np.int64)  # [L, E]
        np.add.at(logical, (np.arange(spec.num_moe_layers)[:, None], table), physical)
        counts.append(logical)
        ids.append(int(r.get("forward_pass_id", len(ids))))
    matrix = count_matrix(np.stack(counts), spec, "global_physical_count", where)
    return counts_trace(spec, matrix, np.array(ids, np.int64), path, _SOURCE, __name__,
                        "forward pass", dump_mode="per_pass (global_physical_count)",
                        ids="physical counts summed per logical expert with "
                            "last_physical_to_logical_map")
