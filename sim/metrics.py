"""Run metrics, computed from the event log alone (see :mod:`sim.eventlog` for its columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from moe_offload_lab.sim.eventlog import DETAIL, DETAILS, KIND, KINDS, RESOURCE, RESOURCES

_HITS = np.array([DETAIL["hit"], DETAIL["prefetch_hit"]], dtype=np.int8)
_EXPERT_DETAILS = np.array([DETAIL[n] for n in ("hit", "prefetch_hit", "inflight", "miss", "cpu")],
                           dtype=np.int8)
_PREFETCHES = np.array([DETAIL[n] for n in ("prefetch", "prefetch_used", "cancelled")],
                       dtype=np.int8)
_WASTED = np.array([DETAIL["prefetch"], DETAIL["cancelled"]], dtype=np.int8)


BREAKDOWN = ("non_expert_s", "gpu_expert_s", "cpu_expert_s", "stall_s", "policy_s")
#: the event counts :func:`summarize` needs beside the step table (see :func:`event_totals`)
TOTALS = ("accesses", "hits", "plain_hits", "used", "prefetches", "prefetch_bytes", "h2d_bytes",
          "copies", "stall_s")


def codes(column: pd.Series, names: tuple[str, ...]) -> np.ndarray:
    """A string column of an event frame as its codes in ``names`` (the log's code tables)."""
    if isinstance(column.dtype, pd.CategoricalDtype) and \
            tuple(column.cat.categories) == names:
        return column.cat.codes.to_numpy()
    return pd.Categorical(column.astype(str), categories=names).codes


def step_parts(kind: np.ndarray, detail: np.ndarray, resource: np.ndarray, step_of: np.ndarray,
               duration: np.ndarray, size: int, first: int = 0) -> dict[str, np.ndarray]:
    """Per step ``first .. first + size - 1``, the seconds of each :data:`BREAKDOWN` part: sums
    of the rows' ``duration`` in row order (``kind``, ``detail``, ``resource``: code arrays [N];
    ``step_of`` [N] int64). Returns arrays [size]."""
    compute = kind == KIND["compute"]
    other = detail == DETAIL["other"]
    parts = {
        "non_expert_s": compute & other,
        "gpu_expert_s": compute & ~other & (resource == RESOURCE["gpu"]),
        "cpu_expert_s": compute & (resource == RESOURCE["cpu"]),
        "stall_s": kind == KIND["stall"],
        "policy_s": kind == KIND["policy"],
    }
    rel = step_of - first  # [N]
    inside = (rel >= 0) & (rel < size)
    return {name: np.bincount(rel[mask & inside], weights=duration[mask & inside],
                              minlength=size)  # [size]
            for name, mask in parts.items()}


def steps_table(step_ids: np.ndarray, start_s: np.ndarray, end_s: np.ndarray,
                tokens: np.ndarray, parts: dict[str, np.ndarray]) -> pd.DataFrame:
    """The step frame (see :func:`step_frame`) from its step rows [S] and parts [S] each."""
    frame = pd.DataFrame({
        "step": np.asarray(step_ids, dtype=np.int64),
        "start_s": start_s,
        "end_s": end_s,
        "latency_s": end_s - start_s,
        "tokens": np.asarray(tokens, dtype=np.int64),
    })
    for name in BREAKDOWN:
        frame[name] = parts[name]
    return frame


def step_frame(events: pd.DataFrame) -> pd.DataFrame:
    """One row per step: ``step``, ``start_s``, ``end_s``, ``latency_s``, ``tokens``, then where
    the step's time went (:data:`BREAKDOWN`, seconds): non-expert compute (attention, router...),
    GPU and CPU expert compute, stalls waiting for copies, and charged policy decisions.

    The parts are sums of intervals: CPU experts and policy work may overlap the GPU stream, so
    they need not add up to ``latency_s``.
    """
    kind = codes(events["kind"], KINDS)  # [N]
    is_step = kind == KIND["step"]
    step_of = events["step"].to_numpy().astype(np.int64, copy=False)  # [N]
    step_ids = step_of[is_step]  # [S]
    start, end = events["start_s"].to_numpy(), events["end_s"].to_numpy()  # [N]
    size = int(step_ids.max()) + 1 if len(step_ids) else 0
    totals = step_parts(kind, codes(events["detail"], DETAILS),
                        codes(events["resource"], RESOURCES), step_of, end - start, size)
    return steps_table(step_ids, start[is_step], end[is_step],
                       events["count"].to_numpy()[is_step],
                       {name: t[step_ids] for name, t in totals.items()})


def event_totals(kind: np.ndarray, detail: np.ndarray, num_bytes: np.ndarray,
                 start_s: np.ndarray, end_s: np.ndarray) -> dict[str, Any]:
    """The counts of :data:`TOTALS` over event rows (code arrays and columns [N]): expert
    accesses, those resident (``hits``) and resident from before (``plain_hits``), prefetch
    copies used and issued, bytes of unused or cancelled prefetches, bytes copied, completed
    copies, seconds of stalls. Counts of disjoint row sets add up."""
    is_copy = kind == KIND["copy"]
    copy_detail, copy_bytes = detail[is_copy], num_bytes[is_copy]
    access = detail[(kind == KIND["compute"]) & np.isin(detail, _EXPERT_DETAILS)]
    stall = kind == KIND["stall"]
    return {
        "accesses": int(len(access)),
        "hits": int(np.isin(access, _HITS).sum()),
        "plain_hits": int((access == DETAIL["hit"]).sum()),
        "used": int((copy_detail == DETAIL["prefetch_used"]).sum()),
        # only prefetches are ever cancelled
        "prefetches": int(np.isin(copy_detail, _PREFETCHES).sum()),
        "prefetch_bytes": int(copy_bytes[np.isin(copy_detail, _WASTED)].sum()),
        "h2d_bytes": int(copy_bytes.sum()),
        "copies": int((copy_detail != DETAIL["cancelled"]).sum()),
        "stall_s": float(pd.Series(end_s[stall] - start_s[stall]).sum()),
    }


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def summarize(events: pd.DataFrame, steps: pd.DataFrame | None = None,
              totals: dict[str, Any] | None = None) -> dict[str, Any]:
    """Headline metrics: step latency (mean, p50, p99 in ms), tokens/s, hit rate, bytes copied,
    stall seconds, prefetch precision and recall, wasted prefetch bytes.

    ``hit_rate``: expert accesses resident when their layer started. ``prefetch_precision``:
    prefetch copies used before leaving the cache over prefetch copies issued (cancelled ones
    included); ``prefetch_recall``: accesses served by a prefetch over accesses not already
    resident from an earlier demand fetch. ``None`` where undefined.

    ``steps`` (:func:`step_frame`) and ``totals`` (:func:`event_totals`) are computed from
    ``events`` unless given (an event log folded step by step keeps them, not the rows).
    """
    if steps is None:
        steps = step_frame(events)
    if totals is None:
        totals = event_totals(codes(events["kind"], KINDS), codes(events["detail"], DETAILS),
                              events["bytes"].to_numpy(), events["start_s"].to_numpy(),
                              events["end_s"].to_numpy())
    latency_ms = steps["latency_s"].to_numpy() * 1e3  # [S]
    makespan_s = float(steps["end_s"].max()) if len(steps) else 0.0
    tokens = int(steps["tokens"].sum())
    n_access, used, prefetches = totals["accesses"], totals["used"], totals["prefetches"]
    return {
        "steps": int(len(steps)),
        "tokens": tokens,
        "makespan_s": makespan_s,
        "step_latency_ms_mean": float(latency_ms.mean()) if len(latency_ms) else None,
        "step_latency_ms_p50": float(np.percentile(latency_ms, 50)) if len(latency_ms) else None,
        "step_latency_ms_p99": float(np.percentile(latency_ms, 99)) if len(latency_ms) else None,
        "tokens_per_s": _ratio(tokens, makespan_s),
        "accesses": n_access,
        "hit_rate": _ratio(totals["hits"], n_access),
        "h2d_bytes": totals["h2d_bytes"],
        "copies": totals["copies"],
        "stall_s": totals["stall_s"],
        "prefetch_copies": prefetches,
        "prefetch_precision": _ratio(used, prefetches),
        "prefetch_recall": _ratio(used, n_access - totals["plain_hits"]),
        "wasted_prefetch_bytes": totals["prefetch_bytes"],
        **{f"{name[:-2]}_ms_per_step": float(steps[name].mean() * 1e3) if len(steps) else None
           for name in BREAKDOWN},
    }


def _stats_ms(values_s: np.ndarray, name: str) -> dict[str, float | None]:
    ms = np.asarray(values_s, dtype=np.float64) * 1e3
    if not len(ms):
        return {f"{name}_mean": None, f"{name}_p50": None, f"{name}_p99": None}
    return {f"{name}_mean": float(ms.mean()), f"{name}_p50": float(np.percentile(ms, 50)),
            f"{name}_p99": float(np.percentile(ms, 99))}


def latency_metrics(steps: pd.DataFrame, schedule: Sequence[np.ndarray], request_id: np.ndarray,
                    phase: np.ndarray, arrival_s: dict[int, float] | None = None
                    ) -> dict[str, Any]:
    """Time per output token and time to first token (ms: mean, p50, p99).

    ``tpot_ms_*``: latency of every decode step (a step holding at least one decode token, phase
    1). ``ttft_ms_*``: per request, the end of the step holding its last prompt token (its first
    step when it has none) minus its arrival (``arrival_s[request]``; default: the start of its
    first step). ``steps`` is :func:`step_frame` of the run, in schedule order.
    """
    starts = steps["start_s"].to_numpy()  # [S]
    ends = steps["end_s"].to_numpy()  # [S]
    latency = ends - starts  # [S]
    decode = np.array([bool((phase[rows] != 0).any()) for rows in schedule], dtype=bool)  # [S]
    first_step: dict[int, int] = {}
    prompt_end: dict[int, int] = {}
    for s, rows in enumerate(schedule):
        for r, ph in zip(request_id[rows].tolist(), phase[rows].tolist(), strict=True):
            first_step.setdefault(r, s)
            if ph == 0:
                prompt_end[r] = s
    ttft = np.array([ends[prompt_end.get(r, s)]
                     - (arrival_s[r] if arrival_s and r in arrival_s else starts[s])
                     for r, s in first_step.items()], dtype=np.float64)  # [R]
    return {**_stats_ms(latency[decode], "tpot_ms"), **_stats_ms(ttft, "ttft_ms"),
            "decode_steps": int(decode.sum()), "requests": len(first_step)}
