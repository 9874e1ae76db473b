"""``simulate_cluster(config) -> ClusterResult``: one expert-parallel run from a plain mapping.

Config keys (all but ``model`` or ``trace.preset`` optional)::

    cluster: h100x8-nvswitch          # name in conf/cluster, YAML path, or mapping
                                      #   ({base: <name>, redundant_slots: 4, ...})
    model: deepseek-v3                # conf/model; the trace preset defaults to it
    balance: probe                    # name in conf/balance, or {name: probe, predictor: oracle}
                                      #   or {policy: eplb, period: 8}
    trace: {preset, tokens, requests, seed, overrides, model_overrides,
            volatile: {shift_every, burst_every, burst_len, seed}}
    batch: 16                         # requests per static batch (sim.workload.static_batches)
    prefill: true                     # run the prompts as one prefill step per batch
    max_steps: null                   # cut the schedule after this many steps
    timeline_steps: 8                 # steps drawn into timeline.json (evenly spaced)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from moe_offload_lab.policies.balancing import load_balancer
from moe_offload_lab.sim.cluster.config import load_cluster
from moe_offload_lab.sim.cluster.engine import LAYER_COLUMNS, ClusterEngine
from moe_offload_lab.sim.cluster.metrics import step_frame, summarize
from moe_offload_lab.sim.cluster.result import ClusterResult
from moe_offload_lab.sim.cluster.timeline import cluster_chrome_trace
from moe_offload_lab.sim.cluster.transfers import ReplicaLinks
from moe_offload_lab.sim.cluster.workloads import build_trace
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.workload import static_batches
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace

_KEYS = ("cluster", "model", "balance", "trace", "batch", "prefill", "max_steps",
         "timeline_steps")


def _positive_int(config: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def simulate_cluster(config: Mapping[str, Any], trace: Trace | None = None) -> ClusterResult:
    """Run one configuration; ``trace`` replaces the synthetic one (tests, recorded traces)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"cluster config must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(_KEYS)}")
    cluster = load_cluster(config.get("cluster", "h100x8-nvswitch"))
    policy = load_balancer(config.get("balance", "static"))
    model = config.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"model must be a name from conf/model, got {model!r}")
    if trace is None:
        trace = build_trace(config.get("trace") or {}, model)
    elif model is not None and trace.spec.name != model:
        raise ConfigError(f"the trace is for model {trace.spec.name!r}, not {model!r}")
    spec = trace.spec
    if spec.num_experts < cluster.ranks:
        raise ConfigError(f"{spec.name} has {spec.num_experts} experts, fewer than the "
                          f"{cluster.ranks} ranks of cluster {cluster.name!r}")
    batch = _positive_int(config, "batch", 16)
    prefill = config.get("prefill", True)
    if not isinstance(prefill, bool):
        raise ConfigError(f"prefill must be true or false, got {prefill!r}")
    schedule = static_batches(trace, batch, prefill=prefill)
    max_steps = _positive_int(config, "max_steps", None)
    if max_steps is not None:
        schedule = schedule[:max_steps]
    n_timeline = _positive_int(config, "timeline_steps", 8) or 8
    sampled = sorted({int(s) for s in np.linspace(0, len(schedule) - 1, n_timeline)}) \
        if schedule else []

    compute = ComputeModel(spec, cluster.hardware())
    wall = time.perf_counter()
    engine = ClusterEngine(cluster, trace, policy, compute, schedule, set(sampled))
    engine.run()
    wall = time.perf_counter() - wall

    layers = pd.DataFrame(engine.layers, columns=list(LAYER_COLUMNS))
    for name in ("step", "layer", "phase", "tokens", "replica_copies"):
        layers[name] = layers[name].astype(np.int64)
    transfers = pd.DataFrame(engine.links.records, columns=list(ReplicaLinks.COLUMNS))
    steps = step_frame(layers)
    summary = summarize(layers, steps, transfers, spec.expert_bytes)
    hw = compute.hardware
    per_rank_bytes = (-(-spec.num_experts // cluster.ranks) + cluster.redundant_slots) \
        * spec.expert_bytes * spec.num_moe_layers + spec.non_expert_bytes
    summary.update({
        "cluster": cluster.name, "gpu": hw.name, "ranks": cluster.ranks,
        "redundant_slots": cluster.redundant_slots, "model": spec.name,
        "balance": getattr(policy, "name", "?"), "oracle": bool(policy.is_oracle),
        "balance_params": repr(getattr(policy, "params", None)),
        "trace_tokens": trace.num_tokens, "batch": batch,
        "weights_per_rank_gib": per_rank_bytes / 2**30,
        "fits_in_gpu_memory": per_rank_bytes <= hw.gpu_mem_bytes,
        "sim_wall_s": wall,
    })
    timeline = cluster_chrome_trace(engine.rank_events, transfers, cluster.ranks, sampled)
    return ClusterResult(summary, layers, steps, transfers, timeline)
