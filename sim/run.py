"""One simulation from a plain config mapping: build the pieces, run the engine, summarize."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.policies.base import Policy, check_lookahead
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.cost_table import cost_summary
from moe_offload_lab.sim.compiled.eligibility import ENGINES
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.eventlog import check_level, write_parquet
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.host import HostTier
from moe_offload_lab.sim.memory import GpuMemory, peak_context
from moe_offload_lab.sim.metrics import latency_metrics, step_frame, summarize
from moe_offload_lab.sim.system import SystemProfile, load_system, with_policy_runtime
from moe_offload_lab.sim.timeline import write_chrome_trace
from moe_offload_lab.sim.trace_cache import TraceCache
from moe_offload_lab.sim.workload import ContinuousBatcher, check_continuous, static_batches
from moe_offload_lab.traces.atomic import write_text
from moe_offload_lab.traces.catalog import check_fields
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace, read_spec
from moe_offload_lab.traces.resources import check_trace_memory
from moe_offload_lab.traces.spec import ModelSpec

# peak memory of a run over its trace's arrays, batch 1 (the event log dominates): measured
# 9.0 KB per Mixtral token (777 bytes of trace) between 20,000 and 200,000 tokens
SIM_MEMORY_FACTOR = 12.0
HOST_DRAM_USABLE = 0.9  # of the profile's host DRAM, for expert weights (the rest: OS, runtime)


@dataclass
class RunConfig:
    """The composed config of ``conf/config.yaml`` (groups as plain mappings)."""

    model: dict[str, Any]
    hardware: dict[str, Any]
    policy: dict[str, Any] | str  # a mapping, or the name of a conf/policy config
    system: dict[str, Any] | str = "fused"  # the runtime's implementation profile (conf/system)
    trace: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    batch: int = 1
    prefill: bool = True
    timeline_events: int = 50_000
    log: str = "full"  # event-log level: full | steps | summary (sim.eventlog)
    engine: str = "auto"  # auto | python | compiled (sim.compiled): which engine runs it
    workload: dict[str, Any] = field(default_factory=dict)
    link: dict[str, Any] = field(default_factory=dict)  # {chunk_mb}: see sim.link
    compare: dict[str, Any] | None = None  # experiment=compare: see sim.compare
    host: dict[str, Any] = field(default_factory=dict)  # {dram_gib}: see sim.host
    cluster: dict[str, Any] | None = None  # cluster=<name>: expert parallelism (sim.cluster)
    balance: dict[str, Any] | None = None  # its balancing policy (conf/balance)
    outputs: dict[str, Any] = field(default_factory=dict)  # {figures, timeline}: see sim.cli

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a composed mapping; unknown top-level keys raise ConfigError."""
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        for group in ("model", "hardware", "policy"):
            if not isinstance(data.get(group), dict):
                raise ConfigError(f"config group {group!r} is missing")
        return cls(**data)


@dataclass
class SimResult:
    """Events, per-step table and summary of one run."""

    events: pd.DataFrame
    steps: pd.DataFrame
    summary: dict[str, Any]
    timeline_events: int = 50_000

    def write(self, out: str | Path, figure: bool = True, timeline: bool = True) -> list[Path]:
        """Write summary.json, steps.parquet, events.parquet, and (unless turned off)
        timeline.json and steps.png into ``out``; each file atomically."""
        from moe_offload_lab.sim.plot import plot_steps

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = [write_text(out / "summary.json", json.dumps(self.summary, indent=2, default=str)),
                 write_parquet(self.steps, out / "steps.parquet"),
                 write_parquet(self.events, out / "events.parquet")]
        if timeline:
            paths.append(write_chrome_trace(self.events, out / "timeline.json",
                                            self.timeline_events))
        if figure:
            s = self.summary
            paths.append(plot_steps(self.steps, out / "steps.png",
                                    f"{s['model']} on {s['hardware']}, {s['policy']}, "
                                    f"{s['capacity_slots']} slots, {batch_label(s)}"))
        return paths


def batch_label(summary: dict[str, Any]) -> str:
    """``batch 4``, or ``continuous batching up to 8``: the batch a run really used."""
    if summary.get("workload") == "continuous":
        return f"continuous batching up to {summary['batch']}"
    return f"batch {summary['batch']}"


@dataclass
class Prepared:
    """Everything of a run that is checked before the trace is read (see :func:`prepare`)."""

    spec: ModelSpec
    hardware: HardwareProfile
    system: SystemProfile
    policy: Policy
    memory: GpuMemory
    chunk_mb: float
    host_dram_experts: int
    workload: WorkloadPlan


def _trace_path(trace_cfg: dict[str, Any]) -> str | None:
    """The trace file of a run: ``trace.path``, else the bundled trace ``trace.bundled``."""
    if trace_cfg.get("path"):
        return str(trace_cfg["path"])
    if trace_cfg.get("bundled"):
        from moe_offload_lab.traces.bundled import path as bundled_path

        return str(bundled_path(str(trace_cfg["bundled"])))
    return None


def _load_trace(cfg: RunConfig, spec: ModelSpec, policy: Policy | None = None,
                traces: TraceCache | None = None) -> Trace:
    """The run's trace: a file (its routing columns only when ``policy`` reads no lookahead or
    features), else the synthetic preset's (from ``traces``, which shares one generation
    between runs: :mod:`sim.trace_cache`)."""
    trace_cfg = cfg.trace or {}
    path = _trace_path(trace_cfg)
    if path:
        routing = policy is not None and not policy.needs_trace_extras(spec)
        trace = Trace.load(path, columns="routing" if routing else "all")
        where = f"trace {path}"
    else:
        preset = trace_cfg.get("preset") or spec.name
        tokens, seed = _tokens(trace_cfg), int(trace_cfg.get("seed", 0))
        if traces is None:
            traces = TraceCache()  # this run's own (the generator, numba, loads on use)
        trace = traces.synthetic(preset, tokens, seed)
        where = f"trace preset {preset!r}"
    _check_trace_spec(trace.spec, spec, where)
    return trace


def _tokens(trace_cfg: dict[str, Any]) -> int:
    tokens = trace_cfg.get("tokens", 2000)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"trace.tokens must be a positive integer, got {tokens!r}")
    return tokens


def _check_trace_spec(recorded: ModelSpec, spec: ModelSpec, where: str) -> None:
    wrong = spec.mismatches(recorded)
    if wrong:
        raise ConfigError(f"{where} was recorded for {recorded.name!r}, which disagrees with "
                          f"model {spec.name!r} ({'; '.join(wrong)}); choose model= to match")


# ---- settings checked before the run (every one must reach the run, or be refused) ---------
_CONTINUOUS_ONLY = ("rate_per_s", "max_batch", "chunk")


@dataclass(frozen=True)
class WorkloadPlan:
    """The checked ``workload`` group (its keys are these fields): static batches of ``batch``,
    or continuous batching."""

    kind: str  # static or continuous
    max_batch: int  # the static batch, or the most requests running at once
    rate_per_s: float = float("inf")
    chunk: int | None = None
    seed: int = 0


def _workload(cfg: RunConfig) -> WorkloadPlan:
    """Check the ``workload`` group: known keys, continuous-only settings not given to static
    batching (they would be ignored), and ``max_batch`` 0 refused rather than read as unset."""
    workload = cfg.workload or {}
    if not isinstance(workload, dict):
        raise ConfigError(f"workload must be a mapping, got {workload!r}")
    check_fields(WorkloadPlan, workload, "workload", required=())
    kind = workload.get("kind", "static")
    if kind == "static":
        unused = [k for k in _CONTINUOUS_ONLY if workload.get(k) is not None]
        unused += ["seed"] if workload.get("seed") not in (None, 0) else []
        if unused:
            raise ConfigError(f"workload.{unused[0]} applies to continuous batching "
                              f"(workload=continuous); static batches are sized by batch=N")
        return WorkloadPlan("static", cfg.batch)
    if kind != "continuous":
        raise ConfigError(f"workload.kind must be static or continuous, got {kind!r}")
    rate = workload.get("rate_per_s")
    if isinstance(rate, str) and rate.strip().lstrip("+.").lower() in ("inf", "infinity"):
        rate = float("inf")  # .inf (YAML) / inf
    rate = float("inf") if rate is None else rate
    max_batch = workload.get("max_batch")
    max_batch = cfg.batch if max_batch is None else max_batch
    chunk, seed = workload.get("chunk"), workload.get("seed") or 0
    check_continuous(rate, max_batch, chunk)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"workload.seed must be an integer, got {seed!r}")
    return WorkloadPlan("continuous", max_batch, rate, chunk, seed)


def _check_timeline_events(cfg: RunConfig) -> None:
    cap = cfg.timeline_events
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"timeline_events must be a positive integer (the most events "
                          f"timeline.json keeps), got {cap!r}")


def _batcher(plan: WorkloadPlan, cfg: RunConfig, trace: Trace) -> ContinuousBatcher | None:
    if plan.kind == "static":
        return None
    return ContinuousBatcher(trace, plan.rate_per_s, plan.max_batch, chunk=plan.chunk,
                             prefill=bool(cfg.prefill), seed=plan.seed)


def _chunk_mb(cfg: RunConfig) -> float:
    link = cfg.link or {}
    if not isinstance(link, dict):
        raise ConfigError(f"link must be a mapping, got {link!r}")
    unknown = sorted(set(link) - {"chunk_mb"})
    if unknown:
        raise ConfigError(f"unknown link key(s): {', '.join(unknown)}")
    chunk_mb = link.get("chunk_mb") or 0
    if isinstance(chunk_mb, bool) or not isinstance(chunk_mb, (int, float)) or chunk_mb < 0:
        raise ConfigError(f"link.chunk_mb must be a number >= 0, got {chunk_mb!r}")
    return chunk_mb


def _host_dram_experts(cfg: RunConfig, spec: ModelSpec, hardware: HardwareProfile) -> int:
    host = cfg.host or {}
    unknown = sorted(set(host) - {"dram_gib"})
    if unknown:
        raise ConfigError(f"unknown host key(s): {', '.join(unknown)}")
    dram_gib = host.get("dram_gib")
    if dram_gib is None:
        dram_gib = HOST_DRAM_USABLE * hardware.host_dram_gib
    if isinstance(dram_gib, bool) or not isinstance(dram_gib, (int, float)) or dram_gib < 0:
        raise ConfigError(f"host.dram_gib must be a number >= 0, got {dram_gib!r}")
    return min(spec.num_expert_keys, int(dram_gib * 1024**3 // spec.expert_bytes))


def _check_batch(cfg: RunConfig) -> None:
    if isinstance(cfg.batch, bool) or not isinstance(cfg.batch, int) or cfg.batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {cfg.batch!r}")


def prepare(cfg: RunConfig) -> Prepared:
    """Check a run's config without reading or generating its trace (cheap: ``moe-sim`` calls
    it for every job of a sweep before any job starts). A trace file is checked for existence
    and its recorded ModelSpec against the model."""
    spec = ModelSpec.from_dict(cfg.model)
    hardware = HardwareProfile.from_dict(cfg.hardware, f"hardware {cfg.hardware.get('name')!r}")
    policy = build_policy(cfg.policy)
    # the policy's own runtime features (PreScope's double buffering) over the profile
    system = with_policy_runtime(_system(cfg.system), policy)
    ComputeModel(spec, hardware, system)  # parses the measured tables
    _check_batch(cfg)
    if (cfg.trace or {}).get("volatile"):
        raise ConfigError("trace.volatile applies to expert-parallel runs (cluster=...) only")
    workload = _workload(cfg)
    _check_timeline_events(cfg)
    check_level(cfg.log)
    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    memory = GpuMemory.plan(cfg.cache or {}, spec, hardware, system)
    path = _trace_path(cfg.trace or {})
    if path:
        _check_trace_spec(read_spec(path), spec, f"trace {path}")
    else:
        tokens = _tokens(cfg.trace or {})
        distances = _preset_lookahead(cfg.trace or {}, spec)
        check_trace_memory(tokens, spec.num_moe_layers, spec.top_k, distances,
                           f"trace.tokens={tokens}", factor=SIM_MEMORY_FACTOR)
        check_lookahead(policy, spec, range(1, distances + 1), "the synthetic trace")
    return Prepared(spec, hardware, system, policy, memory, _chunk_mb(cfg),
                    _host_dram_experts(cfg, spec, hardware), workload)


def _preset_lookahead(trace_cfg: dict[str, Any], spec: ModelSpec) -> int:
    """Lookahead distances of the synthetic trace a run generates (0 for an unknown preset:
    generating it reports the name)."""
    from moe_offload_lab.traces.synth.config import SynthConfig

    try:
        return SynthConfig.preset(trace_cfg.get("preset") or spec.name).lookahead_distances
    except ConfigError:
        return 0


def _system(system: dict[str, Any] | str | None) -> SystemProfile:
    """The run's implementation profile: a ``conf/system`` name or a mapping (a Hydra node)."""
    if isinstance(system, str):
        return load_system(system)
    if not isinstance(system, dict):
        raise ConfigError(f"system must be a conf/system name or a mapping, got {system!r}")
    return SystemProfile.from_dict(system, f"system {system.get('name')!r}")


def simulate(cfg: RunConfig, traces: TraceCache | None = None) -> SimResult:
    """Run one configuration end to end; ``traces`` shares synthetic traces between runs
    (:mod:`sim.trace_cache`; None: generate this run's own)."""
    ready = prepare(cfg)
    spec, hardware, policy = ready.spec, ready.hardware, ready.policy
    trace = _load_trace(cfg, spec, policy, traces)
    check_lookahead(policy, spec, trace.lookahead_distances,
                    f"trace {_trace_path(cfg.trace or {}) or 'of the synthetic preset'}")
    wall = time.perf_counter()
    batcher = _batcher(ready.workload, cfg, trace)
    schedule = None if batcher is not None else static_batches(trace, cfg.batch, cfg.prefill)
    if schedule is not None and not schedule:
        raise ConfigError(f"nothing to simulate: the trace's {trace.num_tokens} tokens are all "
                          f"prompt tokens and prefill is false")
    if schedule is not None:
        largest_step = max((len(r) for r in schedule), default=1)
        peak = peak_context(schedule, trace.request_id, trace.position)
        memory = ready.memory.resolve(spec, largest_step, peak, hardware.name)
    else:  # continuous batching: slots for the largest step the batcher can make
        memory = ready.memory.resolve(spec, spec.num_experts)
    host = None
    if ready.host_dram_experts < spec.num_expert_keys:
        host = HostTier(ready.host_dram_experts, spec.num_expert_keys, hardware.link_bytes_per_s,
                        hardware.nvme_gb_per_s * 1e9)
    engine = Engine(spec, trace, policy, hardware, memory.slots, cfg.batch, schedule=schedule,
                    batcher=batcher, preload=bool((cfg.cache or {}).get("preload", False)),
                    prefill=bool(cfg.prefill), chunk_mb=ready.chunk_mb, host=host,
                    system=ready.system, log=cfg.log, sample_rows=cfg.timeline_events,
                    engine=cfg.engine)
    result = engine.run()
    if batcher is not None:  # the KV cache and activations of the schedule the run made
        memory = memory.resolve(spec, max(len(r) for r in engine.schedule),
                                peak_context(engine.schedule, trace.request_id, trace.position),
                                hardware.name)
    wall_s = time.perf_counter() - wall
    steps = result.step_table if result.step_table is not None else step_frame(result.events)
    summary = {
        "model": spec.name, "hardware": hardware.name, "system": ready.system.name,
        "policy": policy.name,
        # implementation-profile fields the policy's own runtime set over the system's
        "policy_runtime": ",".join(f"{k}={v}" for k, v in sorted(policy.runtime.items())),
        **memory.summary(), "cache_fraction": memory.slots / spec.num_expert_keys,
        "batch": ready.workload.max_batch, "chunk_mb": ready.chunk_mb,
        "host_dram_experts": ready.host_dram_experts,
        "nvme_reads": host.nvme_reads if host is not None else 0,
        # NVMe-to-DRAM reads ahead of need chosen by the policy's tiered rule (Prophet's L2)
        "host_promotions": host.promotions if host is not None else 0,
        # HOBBIT: expert computations from low-precision copies (the accuracy cost, a count)
        "lowbit_expert_computes": engine.protocol.n_lowbit,
        "measured_used": engine.compute.measured_used,
        **cost_summary(policy),  # what each layer's decisions were charged, and from where
        **summarize(result.events, steps, result.totals),
        "workload": (cfg.workload or {}).get("kind", "static"),
        **latency_metrics(steps, engine.schedule, trace.request_id, trace.phase,
                          batcher.arrival_by_id if batcher is not None else None),
        "log": cfg.log, "events": result.rows, "sim_wall_s": wall_s,
        # which engine ran (sim.compiled) and, when the compiled one was asked and not
        # eligible, why not
        "engine": engine.engine_used, "engine_not_compiled": engine.engine_reason,
    }
    return SimResult(result.events, steps, summary, cfg.timeline_events)
