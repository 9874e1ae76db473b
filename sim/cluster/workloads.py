"""Traces for cluster runs, including volatile routing whose hot experts move.

:func:`build_trace` makes a synthetic trace from a mapping (preset, tokens or requests, seed,
generator overrides). :func:`volatile_trace` post-processes a trace so history is a poor guide:

- **topic shifts**: consecutive groups of ``shift_every`` requests get their own random
  relabelling of every layer's experts (a permutation per layer), so the experts that are hot
  change from one group of requests to the next while all within-request structure (reuse,
  cross-layer dependence, lookahead accuracy) is kept;
- **bursts**: inside each request, tokens at positions with ``position % burst_every <
  burst_len`` use another permutation (one per group and window), a sudden short-lived hotspot.

Lookahead columns are relabelled with their target layer's permutation, so they stay as
accurate as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError, check_keys
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.synthetic import LengthDist, SynthConfig, generate

_VOLATILE_KEYS = ("shift_every", "burst_every", "burst_len", "seed")
_TRACE_KEYS = ("preset", "tokens", "requests", "seed", "overrides", "model_overrides",
               "volatile")


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"trace: {name} must be an integer >= {low}, got {value!r}")
    return value


def volatile_trace(trace: Trace, *, shift_every: int = 1, burst_every: int = 0,
                   burst_len: int = 0, seed: int = 0) -> Trace:
    """A copy of ``trace`` whose hot experts shift between request groups and in bursts."""
    _int(shift_every, "volatile.shift_every", 1)
    _int(burst_every, "volatile.burst_every", 0)
    _int(burst_len, "volatile.burst_len", 0)
    if burst_every and not 0 < burst_len < burst_every:
        raise ConfigError("trace: volatile.burst_len must be in (0, burst_every) when "
                          "burst_every is set")
    layers, experts = trace.spec.num_moe_layers, trace.spec.num_experts
    rid = np.asarray(trace.request_id)
    starts = np.r_[True, rid[1:] != rid[:-1]]  # [T] first row of a request
    group = (np.cumsum(starts) - 1) // shift_every  # [T] request group of each row
    key = group * 2  # even: the group's topic; odd: a burst inside it
    if burst_every:
        window = np.asarray(trace.position) // burst_every  # [T]
        in_burst = (np.asarray(trace.position) % burst_every) < burst_len
        key = np.where(in_burst, (group * (window.max() + 1) + window) * 2 + 1, key)
    keys, index = np.unique(key, return_inverse=True)  # [P], [T]
    rng = np.random.default_rng([seed, 0x5EED])
    base = np.tile(np.arange(experts, dtype=np.int16), (len(keys), layers, 1))  # [P, L, E]
    perms = rng.permuted(base, axis=2)  # [P, L, E]
    layer_index = np.arange(layers)[None, :, None]  # [1, L, 1]

    def relabel(ids: np.ndarray, shift: int) -> np.ndarray:
        target = np.clip(layer_index + shift, 0, layers - 1)
        valid = ids >= 0
        out = perms[index[:, None, None], target, np.where(valid, ids, 0)]  # [T, L, k]
        return np.where(valid, out, ids).astype(np.int16)

    provenance = dict(trace.provenance)
    provenance["volatile"] = {"shift_every": shift_every, "burst_every": burst_every,
                              "burst_len": burst_len, "seed": seed}
    return Trace(trace.spec, trace.request_id, trace.position, trace.phase,
                 relabel(trace.expert_ids, 0), trace.gate_weights,
                 {d: relabel(a, d) for d, a in trace.lookahead.items()}, trace.features,
                 provenance)


def build_trace(config: Mapping[str, Any], model: str | None = None) -> Trace:
    """A synthetic trace from ``{preset, tokens | requests, seed, overrides, model_overrides,
    volatile: {shift_every, burst_every, burst_len, seed}}``; ``preset`` defaults to ``model``."""
    check_keys(config, _TRACE_KEYS, "trace")
    preset = config.get("preset", model)
    if not isinstance(preset, str):
        raise ConfigError("trace: give a preset name (conf/trace) or a model")
    synth = SynthConfig.preset(preset)
    overrides = dict(config.get("overrides") or {})
    for key in ("prompt_tokens", "decode_tokens"):
        if isinstance(overrides.get(key), Mapping):
            try:
                overrides[key] = LengthDist(**overrides[key])
            except TypeError as exc:
                raise ConfigError(f"trace: overrides: {key}: {exc}") from None
    if config.get("model_overrides"):
        overrides["model_overrides"] = dict(config["model_overrides"])
    if overrides:
        try:
            synth = synth.with_overrides(**overrides)
        except TypeError as exc:
            raise ConfigError(f"trace: overrides: {exc}") from None
    if model is not None and synth.model != model:
        raise ConfigError(f"trace preset {preset!r} is for model {synth.model!r}, not {model!r}")
    tokens, requests = config.get("tokens"), config.get("requests")
    if tokens is None and requests is None:
        tokens = 2000
    seed = _int(config.get("seed", 0), "seed", 0)
    trace = generate(synth, tokens=tokens, requests=requests, seed=seed)
    volatile = config.get("volatile")
    if volatile:
        if not isinstance(volatile, Mapping):
            raise ConfigError("trace: volatile must be a mapping")
        bad = sorted(set(volatile) - set(_VOLATILE_KEYS))
        if bad:
            raise ConfigError(f"trace: unknown volatile key(s) {', '.join(bad)}; valid: "
                              f"{', '.join(_VOLATILE_KEYS)}")
        trace = volatile_trace(trace, **dict(volatile))
    return trace
