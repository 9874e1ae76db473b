"""Shared helpers of the simulator tests: tiny specs, traces and a checker of run invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.traces.format import DECODE, Trace
from moe_offload_lab.traces.spec import ModelSpec

HW = HardwareProfile(name="test-gpu", gpu_mem_gib=24, gpu_tflops=100, hbm_gb_per_s=1000,
                     link_gb_per_s=25, copy_latency_s=6e-6, kernel_launch_s=5e-6,
                     host_dram_gb_per_s=90, cpu_tflops=1.0)


def spec(num_layers: int = 4, num_experts: int = 8, top_k: int = 2) -> ModelSpec:
    """A small model with realistic expert sizes (so copies dominate) and some non-expert bytes."""
    return ModelSpec(name="toy-sim", num_layers=num_layers, num_experts=num_experts, top_k=top_k,
                     hidden_size=1024, expert_intermediate_size=2048,
                     non_expert_bytes=10_000_000 * num_layers)


def cyclic_trace(model: ModelSpec, tokens: int, period: int) -> Trace:
    """One decode-only request; token ``t`` uses experts ``[(t % period) * k, ... + k)`` at every
    layer, so consecutive tokens never share an expert when ``period > 1``."""
    k, n_layers = model.top_k, model.num_moe_layers
    group = (np.arange(tokens) % period)[:, None, None] * k  # [T, 1, 1]
    ids = (group + np.arange(k)[None, None, :]).repeat(n_layers, axis=1)  # [T, L, k]
    return Trace(spec=model, request_id=np.zeros(tokens, np.int32),
                 position=np.arange(tokens, dtype=np.int32),
                 phase=np.full(tokens, DECODE, np.int8), expert_ids=ids.astype(np.int16),
                 gate_weights=np.full((tokens, n_layers, k), 1.0 / k, np.float32))


def check_log(events: pd.DataFrame, expert_bytes: int) -> None:
    """Invariants any event log must satisfy."""
    kind = events["kind"].astype(str)
    detail = events["detail"].astype(str)
    assert (events["end_s"] >= events["start_s"]).all(), "an interval runs backwards"
    # the link serves one copy at a time, in time order
    copies = events[kind == "copy"].sort_values("start_s", kind="stable")
    on_link = copies[copies["end_s"] > copies["start_s"]]  # queued-then-cancelled never ran
    starts, ends = on_link["start_s"].to_numpy(), on_link["end_s"].to_numpy()
    assert (starts[1:] >= ends[:-1] - 1e-12).all(), "copies overlap on the link"
    done = copies[copies["detail"].astype(str) != "cancelled"]
    assert (done["bytes"] == expert_bytes).all(), "a completed copy moved a partial expert"
    assert (copies["bytes"] <= expert_bytes).all()
    # each demand miss caused exactly one demand or streamed copy
    misses = int(((kind == "compute") & (detail == "miss")).sum())
    demand = int(copies["detail"].astype(str).isin(["demand", "stream"]).sum())
    assert misses == demand
    # the GPU stream and the steps never overlap themselves
    for mask in ((kind == "compute") & (events["resource"].astype(str) == "gpu"),
                 kind == "step"):
        rows = events[mask]
        s, e = rows["start_s"].to_numpy(), rows["end_s"].to_numpy()
        assert (s[1:] >= e[:-1] - 1e-12).all(), "GPU work or steps overlap or run backwards"


FAST_TRAINING = ("train.epochs=1", "train.max_steps=3", "cost.repeats=1", "cost.warmup=0")


def quick_predictor_training(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Auto-trained predictors (``checkpoint: auto``, the main job's Prophet and PreScope) train
    for a few optimiser steps into a cache under ``tmp_path``: their own recipes take a minute
    each and would write into the user's cache folder."""
    from dataclasses import replace

    from moe_offload_lab.policies.learned import autotrain

    monkeypatch.setenv(autotrain.ENV, str(tmp_path / "predictor-cache"))
    monkeypatch.setattr(autotrain, "_MEMORY", {})
    original = autotrain.training_config

    def fast(recipe: autotrain.Recipe) -> dict:
        size = ("predictor.size=tiny",) if recipe.predictor == "history-transformer" else ()
        return original(replace(recipe, overrides=(*recipe.overrides, *FAST_TRAINING, *size)))

    monkeypatch.setattr(autotrain, "training_config", fast)
