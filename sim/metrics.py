"""Run metrics, computed from the event log alone (see :mod:`sim.eventlog` for its columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

_HITS = ("hit", "prefetch_hit")
_EXPERT_DETAILS = ("hit", "prefetch_hit", "inflight", "miss", "cpu")


BREAKDOWN = ("non_expert_s", "gpu_expert_s", "cpu_expert_s", "stall_s", "policy_s")


def step_frame(events: pd.DataFrame) -> pd.DataFrame:
    """One row per step: ``step``, ``start_s``, ``end_s``, ``latency_s``, ``tokens``, then where
    the step's time went (:data:`BREAKDOWN`, seconds): non-expert compute (attention, router...),
    GPU and CPU expert compute, stalls waiting for copies, and charged policy decisions.

    The parts are sums of intervals: CPU experts and policy work may overlap the GPU stream, so
    they need not add up to ``latency_s``.
    """
    steps = events[events["kind"] == "step"]
    step_ids = steps["step"].to_numpy()  # [S]
    frame = pd.DataFrame({
        "step": step_ids,
        "start_s": steps["start_s"].to_numpy(),
        "end_s": steps["end_s"].to_numpy(),
        "latency_s": (steps["end_s"] - steps["start_s"]).to_numpy(),
        "tokens": steps["count"].to_numpy(),
    })
    kind, detail = events["kind"], events["detail"]
    resource = events["resource"]
    compute = (kind == "compute").to_numpy()
    other = (detail == "other").to_numpy()
    parts = {
        "non_expert_s": compute & other,
        "gpu_expert_s": compute & ~other & (resource == "gpu").to_numpy(),
        "cpu_expert_s": compute & (resource == "cpu").to_numpy(),
        "stall_s": (kind == "stall").to_numpy(),
        "policy_s": (kind == "policy").to_numpy(),
    }
    step_of = events["step"].to_numpy()  # [N]
    duration = (events["end_s"] - events["start_s"]).to_numpy()  # [N]
    size = int(step_ids.max()) + 1 if len(step_ids) else 0
    for name, mask in parts.items():
        mask = mask & (step_of >= 0)
        totals = np.bincount(step_of[mask], weights=duration[mask], minlength=size)  # [max step+1]
        frame[name] = totals[step_ids] if len(step_ids) else np.zeros(0)
    return frame


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def summarize(events: pd.DataFrame) -> dict[str, Any]:
    """Headline metrics: step latency (mean, p50, p99 in ms), tokens/s, hit rate, bytes copied,
    stall seconds, prefetch precision and recall, wasted prefetch bytes.

    ``hit_rate``: expert accesses resident when their layer started. ``prefetch_precision``:
    prefetch copies used before leaving the cache over prefetch copies issued (cancelled ones
    included); ``prefetch_recall``: accesses served by a prefetch over accesses not already
    resident from an earlier demand fetch. ``None`` where undefined.
    """
    kind, detail = events["kind"], events["detail"]  # categorical: comparisons are on codes
    steps = step_frame(events)
    latency_ms = steps["latency_s"].to_numpy() * 1e3  # [S]
    makespan_s = float(steps["end_s"].max()) if len(steps) else 0.0
    tokens = int(steps["tokens"].sum())
    is_copy = (kind == "copy").to_numpy()
    copy_detail = detail[is_copy]
    copy_bytes = events["bytes"].to_numpy()[is_copy]
    access = detail[(kind == "compute").to_numpy() & detail.isin(_EXPERT_DETAILS).to_numpy()]
    n_access = len(access)
    hits = int(access.isin(_HITS).sum())
    plain_hits = int((access == "hit").sum())
    used = int((copy_detail == "prefetch_used").sum())
    # only prefetches are ever cancelled
    prefetches = int(copy_detail.isin(("prefetch", "prefetch_used", "cancelled")).sum())
    prefetch_bytes = copy_bytes[copy_detail.isin(("prefetch", "cancelled")).to_numpy()]
    stall = events[kind == "stall"]
    return {
        "steps": int(len(steps)),
        "tokens": tokens,
        "makespan_s": makespan_s,
        "step_latency_ms_mean": float(latency_ms.mean()) if len(latency_ms) else None,
        "step_latency_ms_p50": float(np.percentile(latency_ms, 50)) if len(latency_ms) else None,
        "step_latency_ms_p99": float(np.percentile(latency_ms, 99)) if len(latency_ms) else None,
        "tokens_per_s": _ratio(tokens, makespan_s),
        "accesses": n_access,
        "hit_rate": _ratio(hits, n_access),
        "h2d_bytes": int(copy_bytes.sum()),
        "copies": int((copy_detail != "cancelled").sum()),
        "stall_s": float((stall["end_s"] - stall["start_s"]).sum()),
        "prefetch_copies": prefetches,
        "prefetch_precision": _ratio(used, prefetches),
        "prefetch_recall": _ratio(used, n_access - plain_hits),
        "wasted_prefetch_bytes": int(prefetch_bytes.sum()),
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
