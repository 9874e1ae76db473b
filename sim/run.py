"""One simulation from a plain config mapping: build the pieces, run the engine, summarize."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from policies.config import build_policy
from sim.engine import Engine
from sim.eventlog import write_parquet
from sim.hardware import HardwareProfile
from sim.metrics import latency_metrics, step_frame, summarize
from sim.timeline import write_chrome_trace
from sim.workload import ContinuousBatcher
from traces.errors import ConfigError
from traces.format import Trace
from traces.spec import ModelSpec
from traces.synthetic import generate


@dataclass
class RunConfig:
    """The composed config of ``conf/config.yaml`` (groups as plain mappings)."""

    model: dict[str, Any]
    hardware: dict[str, Any]
    policy: dict[str, Any] | str  # a mapping, or the name of a conf/policy config
    trace: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    batch: int = 1
    prefill: bool = True
    timeline_events: int = 50_000
    out: str | None = None
    workload: dict[str, Any] = field(default_factory=dict)
    link: dict[str, Any] = field(default_factory=dict)  # {chunk_mb}: see sim.link
    compare: dict[str, Any] | None = None  # experiment=compare: see sim.compare

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

    def write(self, out: str | Path) -> list[Path]:
        """Write summary.json, steps.parquet, events.parquet and timeline.json into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        summary = out / "summary.json"
        summary.write_text(json.dumps(self.summary, indent=2, default=str), encoding="utf-8")
        return [summary, write_parquet(self.steps, out / "steps.parquet"),
                write_parquet(self.events, out / "events.parquet"),
                write_chrome_trace(self.events, out / "timeline.json", self.timeline_events)]


def _load_trace(cfg: RunConfig, spec: ModelSpec) -> Trace:
    trace_cfg = cfg.trace or {}
    path = trace_cfg.get("path")
    if path:
        return Trace.load(path)
    preset = trace_cfg.get("preset") or spec.name
    tokens = trace_cfg.get("tokens", 2000)
    seed = trace_cfg.get("seed", 0)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"trace.tokens must be a positive integer, got {tokens!r}")
    return generate(preset, tokens=tokens, seed=int(seed))


def capacity_from(cache: dict[str, Any], spec: ModelSpec) -> int:
    """Slots of the cache: ``cache.slots`` if set, else ``cache.fraction`` of all experts."""
    slots = cache.get("slots")
    if slots is not None:
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise ConfigError(f"cache.slots must be an integer, got {slots!r}")
        return slots
    fraction = cache.get("fraction", 0.5)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction <= 1:
        raise ConfigError(f"cache.fraction must be in (0, 1], got {fraction!r}")
    return int(round(fraction * spec.num_expert_keys))


def _batcher(cfg: RunConfig, trace: Trace) -> ContinuousBatcher | None:
    workload = cfg.workload or {}
    kind = workload.get("kind", "static")
    if kind == "static":
        return None
    if kind != "continuous":
        raise ConfigError(f"workload.kind must be static or continuous, got {kind!r}")
    rate = workload.get("rate_per_s")
    if isinstance(rate, str) and rate.strip().lstrip("+.").lower() in ("inf", "infinity"):
        rate = float("inf")  # .inf (YAML) / inf
    return ContinuousBatcher(trace, float("inf") if rate is None else rate,
                             workload.get("max_batch") or cfg.batch, chunk=workload.get("chunk"),
                             prefill=bool(cfg.prefill), seed=int(workload.get("seed") or 0))


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


def simulate(cfg: RunConfig) -> SimResult:
    """Run one configuration end to end."""
    spec = ModelSpec.from_dict(cfg.model)
    hardware = HardwareProfile.from_dict(cfg.hardware, f"hardware {cfg.hardware.get('name')!r}")
    policy = build_policy(cfg.policy)
    trace = _load_trace(cfg, spec)
    slots = capacity_from(cfg.cache or {}, spec)
    wall = time.perf_counter()
    batcher = _batcher(cfg, trace)
    engine = Engine(spec, trace, policy, hardware, slots, cfg.batch, batcher=batcher,
                    preload=bool((cfg.cache or {}).get("preload", False)),
                    prefill=bool(cfg.prefill), chunk_mb=_chunk_mb(cfg))
    result = engine.run()
    wall_s = time.perf_counter() - wall
    steps = step_frame(result.events)
    summary = {
        "model": spec.name, "hardware": hardware.name, "policy": policy.name,
        "capacity_slots": slots, "cache_fraction": slots / spec.num_expert_keys,
        "cache_bytes": slots * spec.expert_bytes,
        "fits_gpu_memory": bool(slots * spec.expert_bytes + spec.non_expert_bytes
                                <= hardware.gpu_mem_bytes),
        "batch": cfg.batch, "chunk_mb": _chunk_mb(cfg), **summarize(result.events),
        "workload": (cfg.workload or {}).get("kind", "static"),
        **latency_metrics(steps, engine.schedule, trace.request_id, trace.phase,
                          batcher.arrival_by_id if batcher is not None else None),
        "events": len(result.events), "sim_wall_s": wall_s,
    }
    return SimResult(result.events, steps, summary, cfg.timeline_events)
