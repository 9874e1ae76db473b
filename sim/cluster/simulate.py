"""``simulate_cluster(config) -> ClusterResult``: one expert-parallel run from a plain mapping.

Config keys (all but ``model`` or ``trace.preset`` optional)::

    cluster: h100x8-nvswitch          # name in conf/cluster, YAML path, or mapping
                                      #   ({base: <name>, redundant_slots: 4, ...})
    model: deepseek-v3                # conf/model name, or a full ModelSpec mapping (overrides
                                      #   such as expert_bytes_per_param: 1.0 for FP8 kept)
    balance: probe                    # name in conf/balance, or {name: probe, predictor: oracle}
                                      #   or {policy: eplb, period: 8}; checkpoint: auto trains
                                      #   PROBE's learned predictor once (predictor_cache)
    trace: {preset, tokens, requests, seed, overrides, model_overrides,
            volatile: {shift_every, burst_every, burst_len, seed}}
    batch: 16                         # requests per static batch (sim.workload.static_batches)
    prefill: true                     # run the prompts as one prefill step per batch
    max_steps: null                   # cut the schedule after this many steps
    timeline_steps: 8                 # steps drawn into timeline.json (evenly spaced)
    strict_memory: false              # refuse a run whose weights do not fit a rank's GPU

GPU memory per rank: the experts a rank hosts for every MoE layer, its redundant slots as the
policy holds them (``pool``: none; ``resident``, R per layer; ``double-buffer``, 2 R), the
shared experts and the non-expert weights (attention is data-parallel, so every rank holds
them); activations and KV cache are not counted. ``fits_gpu_memory`` reports whether that fits
the GPU, as for single-GPU runs; ``strict_memory`` makes a run that does not fit an error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from moe_offload_lab.policies.balancing import load_balancer
from moe_offload_lab.sim.cluster.config import ClusterSpec, load_cluster
from moe_offload_lab.sim.cluster.engine import LAYER_COLUMNS, ClusterEngine, pool_experts
from moe_offload_lab.sim.cluster.metrics import step_frame, summarize
from moe_offload_lab.sim.cluster.predictor_cache import resolve_checkpoints
from moe_offload_lab.sim.cluster.result import ClusterResult
from moe_offload_lab.sim.cluster.timeline import cluster_chrome_trace
from moe_offload_lab.sim.cluster.transfers import ReplicaLinks
from moe_offload_lab.sim.cluster.workloads import build_trace
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.workload import static_batches
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.errors import ConfigError, check_keys
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_KEYS = ("cluster", "model", "balance", "trace", "batch", "prefill", "max_steps",
         "timeline_steps", "strict_memory")


def _positive_int(config: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _model(model: Any) -> ModelSpec | None:
    """The run's ModelSpec from a conf/model name or a full mapping (None: the trace's)."""
    if model is None:
        return None
    if isinstance(model, str):
        return load_model(model)
    if isinstance(model, Mapping):
        return ModelSpec.from_dict(dict(model))
    raise ConfigError(f"model must be a name from conf/model or a model mapping, got {model!r}")


def _with_spec(trace: Trace, spec: ModelSpec | None, where: str) -> tuple[Trace, ModelSpec]:
    """The trace and the spec the run uses: the run's model (name, quantisation, sizes) when
    its routing shape matches the trace's."""
    if spec is None:
        return trace, trace.spec
    wrong = spec.mismatches(trace.spec)
    if wrong:
        raise ConfigError(f"{where} is for model {trace.spec.name!r}, not {spec.name!r} "
                          f"({'; '.join(wrong)})")
    return trace, spec


def memory_per_rank(spec: ModelSpec, cluster: ClusterSpec, pool: str) -> dict[str, Any]:
    """Bytes a rank holds (module docstring) and whether they fit its GPU."""
    hw = cluster.hardware()
    layers = spec.num_moe_layers
    hosted = -(-spec.num_experts // cluster.ranks) * layers
    redundant = pool_experts(pool, cluster.redundant_slots, layers)
    needed = ((hosted + redundant) * spec.expert_bytes + spec.shared_expert_bytes * layers
              + spec.non_expert_bytes)
    return {"weights_per_rank_gib": needed / 2**30, "gpu_memory_needed_gb": needed / 1e9,
            "gpu_memory_gb": hw.gpu_mem_bytes / 1e9, "fits_gpu_memory": needed <= hw.gpu_mem_bytes,
            "redundant_experts_per_rank": redundant,
            "redundant_bytes_per_rank": redundant * spec.expert_bytes}


def simulate_cluster(config: Mapping[str, Any], trace: Trace | None = None) -> ClusterResult:
    """Run one configuration; ``trace`` replaces the synthetic one (tests, recorded traces)."""
    check_keys(config, _KEYS, "cluster config")
    cluster = load_cluster(config.get("cluster", "h100x8-nvswitch"))
    balance = config.get("balance", "static")
    load_balancer(balance)  # a bad balance config fails before any trace is built
    spec = _model(config.get("model"))
    recorded = trace
    if trace is None:
        trace = build_trace(config.get("trace") or {}, spec.name if spec else None)
        trace, spec = _with_spec(trace, spec, "the trace preset")
    else:
        trace, spec = _with_spec(trace, spec, "the trace")
    balance = resolve_checkpoints([balance], config.get("trace") or {}, spec.name, recorded)[0]
    policy = load_balancer(balance)
    if spec.num_experts < cluster.ranks:
        raise ConfigError(f"{spec.name} has {spec.num_experts} experts, fewer than the "
                          f"{cluster.ranks} ranks of cluster {cluster.name!r}")
    strict = config.get("strict_memory", False)
    if not isinstance(strict, bool):
        raise ConfigError(f"strict_memory must be true or false, got {strict!r}")
    memory = memory_per_rank(spec, cluster, policy.pool)
    if strict and not memory["fits_gpu_memory"]:
        raise ConfigError(f"{memory['gpu_memory_needed_gb']:.1f} GB of weights per rank do not "
                          f"fit in {cluster.gpu}'s {memory['gpu_memory_gb']:.1f} GB "
                          f"({spec.name}, {spec.expert_bytes_per_param:g} bytes per expert "
                          f"parameter, balance {policy.name!r}; strict_memory is set)")
    batch = _positive_int(config, "batch", 16)
    prefill = config.get("prefill", True)
    if not isinstance(prefill, bool):
        raise ConfigError(f"prefill must be true or false, got {prefill!r}")
    schedule = static_batches(trace, batch, prefill=prefill)
    max_steps = _positive_int(config, "max_steps", None)
    if max_steps is not None:
        schedule = schedule[:max_steps]
    if not schedule:
        raise ConfigError("nothing to simulate: the schedule is empty")
    n_timeline = _positive_int(config, "timeline_steps", 8) or 8
    sampled = sorted({int(s) for s in np.linspace(0, len(schedule) - 1, n_timeline)})

    compute = ComputeModel(spec, cluster.hardware())
    wall, cpu = time.perf_counter(), time.process_time()
    engine = ClusterEngine(cluster, trace, policy, compute, schedule, set(sampled), spec)
    engine.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    layers = pd.DataFrame(engine.layers, columns=list(LAYER_COLUMNS))
    for name in ("step", "layer", "phase", "tokens", "replica_copies", "replicas"):
        layers[name] = layers[name].astype(np.int64)
    transfers = pd.DataFrame(engine.links.records(), columns=list(ReplicaLinks.COLUMNS))
    for name in ("step", "layer", "expert", "src", "dst", "bytes"):
        transfers[name] = transfers[name].astype(np.int64)
    steps = step_frame(layers)
    summary = summarize(layers, steps, transfers, spec.expert_bytes)
    hw = compute.hardware
    summary.update({
        "cluster": cluster.name, "gpu": hw.name, "hardware": hw.name, "ranks": cluster.ranks,
        "redundant_slots": cluster.redundant_slots, "model": spec.name,
        "expert_bytes_per_param": spec.expert_bytes_per_param, "expert_bytes": spec.expert_bytes,
        "balance": getattr(policy, "name", "?"), "oracle": bool(policy.is_oracle),
        "pool": policy.pool, "balance_params": repr(getattr(policy, "params", None)),
        "trace_tokens": trace.num_tokens, "batch": batch, **memory,
        "sim_wall_s": wall, "sim_cpu_s": cpu,
    })
    timeline = cluster_chrome_trace(engine.rank_events, transfers, cluster.ranks, sampled)
    return ClusterResult(summary, layers, steps, transfers, timeline)
