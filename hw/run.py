"""One replay run from a plain config mapping (for a command line or a notebook).

Keys (unknown ones raise :class:`~traces.errors.ConfigError`)::

    model: mixtral-8x7b            # a conf/model name, or a ModelSpec mapping
    model_overrides: {num_layers: 4, hidden_size: 256}   # optional: a scaled-down copy
    trace: {path: run.parquet}     # or {preset: <traces.synthetic preset>, tokens: 200, seed: 0}
                                   # or {bundled: <name>}; default: the model's preset
    policy: lru                    # a conf/policy name or mapping (ignored with resident_all)
    cache: {slots: 64}             # or {gpu_memory_gb: 20}
    batch: 1
    device: cpu                    # or cuda
    prefill: true
    seed: 0
    resident_all: false
    hardware: h100-sxm             # cost model and memory bound (as in the simulator)

:func:`run_from_config` returns the :class:`~hw.replay.ReplayResult`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moe_offload_lab.hw.replay import DEFAULT_HARDWARE, ReplayResult, run_replay
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.hf_config import load_model_spec
from moe_offload_lab.traces.spec import ModelSpec

KEYS = {"model", "model_overrides", "trace", "policy", "cache", "batch", "device", "prefill",
        "seed", "resident_all", "hardware"}


def _spec(model: Any, overrides: Mapping[str, Any] | None) -> ModelSpec:
    if isinstance(model, str):  # a catalog name, a ModelSpec YAML or a Hugging Face config.json
        spec = load_model_spec(model)
    elif isinstance(model, Mapping):
        spec = ModelSpec.from_dict(dict(model))
    else:
        raise ConfigError(f"model must be a name or a mapping, got {model!r}")
    return spec.with_overrides(**dict(overrides)) if overrides else spec


def _trace(cfg: Mapping[str, Any], spec: ModelSpec,
           overrides: Mapping[str, Any] | None = None) -> Trace:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"trace must be a mapping, got {cfg!r}")
    unknown = sorted(set(cfg) - {"path", "bundled", "preset", "tokens", "seed"})
    if unknown:
        raise ConfigError(f"unknown trace key(s): {', '.join(unknown)}")
    if cfg.get("path"):
        return Trace.load(str(cfg["path"]))
    if cfg.get("bundled"):
        from moe_offload_lab.traces.bundled import path as bundled_path

        return Trace.load(bundled_path(str(cfg["bundled"])))
    from moe_offload_lab.traces.synthetic import SynthConfig, generate

    tokens = cfg.get("tokens", 200)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"trace.tokens must be a positive integer, got {tokens!r}")
    synth = SynthConfig.preset(cfg.get("preset") or spec.name)
    if overrides:  # a scaled-down model: the preset's routing on the smaller shape, with its
        # per-layer lookahead accuracy averaged (the list was sized for the full depth)
        accuracy = (sum(synth.lookahead_accuracy) / len(synth.lookahead_accuracy),)
        synth = synth.with_overrides(model_overrides={**synth.model_overrides, **overrides},
                                     lookahead_accuracy=accuracy)
    return generate(synth, tokens=tokens, seed=int(cfg.get("seed", 0)))


def run_from_config(mapping: Mapping[str, Any]) -> ReplayResult:
    """Validate ``mapping`` (see the module docstring) and run the replay."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"a replay config must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - KEYS)
    if unknown:
        raise ConfigError(f"unknown replay config key(s): {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(KEYS))}")
    if "model" not in mapping:
        raise ConfigError("a replay config needs a model")
    spec = _spec(mapping["model"], mapping.get("model_overrides"))
    trace = _trace(mapping.get("trace") or {}, spec, mapping.get("model_overrides"))
    cache = mapping.get("cache") or {}
    if not isinstance(cache, Mapping) or set(cache) - {"slots", "gpu_memory_gb"}:
        raise ConfigError(f"cache must be {{slots: N}} or {{gpu_memory_gb: X}}, got {cache!r}")
    resident_all = bool(mapping.get("resident_all", False))
    return run_replay(spec, trace, mapping.get("policy"), capacity_slots=cache.get("slots"),
                      gpu_memory_gb=cache.get("gpu_memory_gb"), batch=mapping.get("batch", 1),
                      device=str(mapping.get("device", "cpu")),
                      prefill=bool(mapping.get("prefill", True)), seed=int(mapping.get("seed", 0)),
                      resident_all=resident_all,
                      hardware=mapping.get("hardware", DEFAULT_HARDWARE))
