"""Per-step frame and summary of a cluster run, from the engine's per-layer rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def step_frame(layers: pd.DataFrame) -> pd.DataFrame:
    """One row per step: phase, tokens, start and end, duration, imbalance, copies, stall."""
    if layers.empty:
        return pd.DataFrame()
    grouped = layers.groupby("step", sort=True)
    steps = grouped.agg(
        phase=("phase", "first"), tokens=("tokens", "first"), start_s=("start_s", "min"),
        end_s=("end_s", "max"), stall_s=("stall_s", "sum"), expert_s=("expert_max_s", "sum"),
        a2a_s=("dispatch_s", "sum"), imbalance_before=("imbalance_before", "mean"),
        imbalance_after=("imbalance_after", "mean"),
        imbalance_after_max=("imbalance_after", "max"), replica_copies=("replica_copies", "sum"),
        a2a_bytes=("a2a_bytes", "sum"), plan_wait_s=("plan_wait_s", "sum"))
    steps["a2a_s"] *= 2  # dispatch and combine
    steps["duration_s"] = steps["end_s"] - steps["start_s"]
    return steps.reset_index()


def _p99(values: np.ndarray) -> float:
    return float(np.percentile(values, 99)) if len(values) else float("nan")


def summarize(layers: pd.DataFrame, steps: pd.DataFrame, transfers: pd.DataFrame,
              expert_bytes: int) -> dict[str, Any]:
    """Imbalance (mean and p99 over step-layers, before and after balancing), prefill latency,
    decode throughput, replica bytes, and the exposed time of each side stream: copies
    (``stall_s``) and prediction plus planning (``plan_wait_s``); ``decision_s`` and
    ``copy_link_s`` are their total work, hidden or not."""
    before = layers["imbalance_before"].to_numpy()
    after = layers["imbalance_after"].to_numpy()
    prefill = steps[steps["phase"] == 0] if len(steps) else steps
    decode = steps[steps["phase"] != 0] if len(steps) else steps
    decode_s = float(decode["duration_s"].sum()) if len(decode) else 0.0
    decode_tokens = int(decode["tokens"].sum()) if len(decode) else 0
    total_s = float(steps["end_s"].max()) if len(steps) else 0.0
    stall = float(layers["stall_s"].sum())
    is_prefill = (layers["phase"] == 0).to_numpy()  # [step-layers]
    return {
        "steps": int(len(steps)),
        "prefill_steps": int(len(prefill)),
        "decode_steps": int(len(decode)),
        "total_s": total_s,
        "imbalance_before_mean": float(before.mean()) if len(before) else float("nan"),
        "imbalance_before_p99": _p99(before),
        "imbalance_after_mean": float(after.mean()) if len(after) else float("nan"),
        "imbalance_after_p99": _p99(after),
        "imbalance_prefill_before_mean": float(before[is_prefill].mean())
        if is_prefill.any() else None,
        "imbalance_prefill_after_mean": float(after[is_prefill].mean())
        if is_prefill.any() else None,
        "prefill_latency_ms_mean": float(prefill["duration_s"].mean() * 1e3)
        if len(prefill) else None,
        "prefill_tokens": int(prefill["tokens"].sum()) if len(prefill) else 0,
        "decode_tokens": decode_tokens,
        "decode_tokens_per_s": decode_tokens / decode_s if decode_s > 0 else None,
        "decode_step_ms_mean": float(decode["duration_s"].mean() * 1e3) if len(decode) else None,
        "replica_copies": int(len(transfers)),
        "replica_bytes": int(len(transfers) * expert_bytes),
        "stall_s": stall,
        "stall_share": stall / total_s if total_s > 0 else 0.0,
        "plan_wait_s": float(layers["plan_wait_s"].sum()),
        "decision_s": float(layers["decision_s"].sum()),
        "copy_link_s": float(transfers["link_s"].sum()) if len(transfers) else 0.0,
        "replicas_per_layer_mean": float(layers["replicas"].mean()) if len(layers) else 0.0,
        "expert_s": float(layers["expert_max_s"].sum()),
        "a2a_s": float(2 * layers["dispatch_s"].sum()),
        "a2a_bytes": float(2 * layers["a2a_bytes"].sum()),
    }
