"""The validation matrix: its config, the (shrunk) model, the shared trace and the cells."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.memory import GpuMemory
from moe_offload_lab.traces.catalog import available, check_fields, load_model
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec
from moe_offload_lab.traces.synthetic import LengthDist, SynthConfig, generate


@dataclass
class ValidationConfig:
    """``conf/hw/validate.yaml`` (documented there)."""

    model: str = "mixtral-8x7b"
    layers: int | None = 2
    model_overrides: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    policies: list[str] = field(default_factory=lambda: ["lru", "lfu", "fifo", "gate-lookahead"])
    cache: dict[str, Any] = field(default_factory=lambda: {"fractions": [0.25, 0.5, 0.75]})
    batches: list[int] = field(default_factory=lambda: [1, 16])
    prefill: bool = True
    device: str = "auto"
    profile: str | None = None
    calibrate: dict[str, Any] = field(default_factory=dict)
    timeline_cell: int = 0
    warmup: bool = True
    repeats: int = 1
    timeline_events: int = 50_000
    seed: int = 0
    out: str | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationConfig:
        """From a composed mapping; unknown keys are a one-line error."""
        check_fields(cls, data, "validate", required=())
        cfg = cls(**data)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Validate shapes and numbers (one-line ConfigErrors)."""
        if self.layers is not None and (isinstance(self.layers, bool)
                                        or not isinstance(self.layers, int) or self.layers < 1):
            raise ConfigError(f"layers must be a positive integer or null, got {self.layers!r}")
        if not isinstance(self.batches, list) or not self.batches or not all(
                isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in self.batches):
            raise ConfigError(f"batches must be a non-empty list of positive integers, "
                              f"got {self.batches!r}")
        if not isinstance(self.policies, list) or not self.policies or not all(
                isinstance(p, str) for p in self.policies):
            raise ConfigError(f"policies must be a non-empty list of names, got {self.policies!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) \
                or self.repeats < 1:
            raise ConfigError(f"repeats must be a positive integer, got {self.repeats!r}")
        unknown = sorted(set(self.cache or {}) - {"fractions", "gpu_memory_gb"})
        if unknown:
            raise ConfigError(f"unknown cache key(s): {', '.join(unknown)}")
        unknown = sorted(set(self.trace or {}) - {"preset", "tokens", "seed", "prompt_mean",
                                                  "decode_mean"})
        if unknown:
            raise ConfigError(f"unknown trace key(s): {', '.join(unknown)}")


@dataclass(frozen=True)
class Cell:
    """One run of the matrix."""

    policy: str
    cache_label: str
    slots: int
    batch: int

    @property
    def label(self) -> str:
        """A file-safe name."""
        return f"{self.policy}-{self.cache_label}-b{self.batch}"


def model_spec(cfg: ValidationConfig) -> ModelSpec:
    """The model, shrunk to ``layers`` transformer blocks (non-expert bytes scaled with them);
    the name stays, so a profile calibrated on the model applies."""
    spec = load_model(cfg.model, **(cfg.model_overrides or {}))
    if cfg.layers is not None and cfg.layers != spec.num_layers:
        if cfg.layers <= spec.first_k_dense:
            raise ConfigError(f"layers={cfg.layers} leaves no MoE layer in {spec.name} "
                              f"(first_k_dense={spec.first_k_dense})")
        scaled = int(spec.non_expert_bytes * cfg.layers / spec.num_layers)
        spec = spec.with_overrides(num_layers=cfg.layers, non_expert_bytes=scaled)
    return spec


def make_trace(cfg: ValidationConfig, spec: ModelSpec) -> Trace:
    """The synthetic trace every cell replays (short requests: prompts and decodes both occur)."""
    t = cfg.trace or {}
    preset = t.get("preset")
    if preset is None and spec.name in available("trace"):
        preset = spec.name
    base = load_model(spec.name) if spec.name in available("model") else spec
    overrides = {k: v for k, v in spec.to_dict().items() if k != "name" and base.to_dict().get(k)
                 != v}
    if preset:
        synth = SynthConfig.preset(preset)
        accuracy = synth.lookahead_accuracy
        if len(accuracy) > 1 and len(accuracy) != spec.num_moe_layers - 1:
            accuracy = tuple(accuracy[:max(1, spec.num_moe_layers - 1)])
            if len(accuracy) != max(1, spec.num_moe_layers - 1):
                accuracy = (float(sum(accuracy) / len(accuracy)),)
        synth = synth.with_overrides(model_overrides={**synth.model_overrides, **overrides},
                                     lookahead_accuracy=accuracy)
    else:
        synth = SynthConfig(model=spec.name, name=f"{spec.name}-validate", lookahead_distances=2,
                            model_overrides=overrides)
    prompt, decode = float(t.get("prompt_mean", 16)), float(t.get("decode_mean", 48))
    synth = synth.with_overrides(prompt_tokens=LengthDist(mean=prompt, min=1, max=4096),
                                 decode_tokens=LengthDist(mean=decode, min=1, max=4096))
    tokens = t.get("tokens", 256)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"trace.tokens must be a positive integer, got {tokens!r}")
    trace = generate(synth, tokens=tokens, seed=int(t.get("seed", cfg.seed)))
    wrong = spec.mismatches(trace.spec)
    if wrong:
        raise ConfigError(f"trace does not match model {spec.name}: {'; '.join(wrong)}")
    return trace


def cache_sizes(cfg: ValidationConfig, spec: ModelSpec,
                hardware: HardwareProfile) -> list[tuple[str, int]]:
    """``(label, slots)`` per cache size: GPU budgets (GB) when given, else fractions of all
    routed experts (checked the simulator's way, :meth:`sim.memory.GpuMemory.plan`)."""
    cache = cfg.cache or {}
    budgets = cache.get("gpu_memory_gb")
    out: list[tuple[str, int]] = []
    if budgets:
        for gb in budgets if isinstance(budgets, list) else [budgets]:
            memory = GpuMemory.plan({"gpu_memory_gb": gb}, spec, hardware)
            slots = min(int(memory.slots or 0), spec.num_expert_keys)
            out.append((f"{gb:g}GB", slots))
        return out
    fractions = cache.get("fractions") or [0.5]
    for fraction in fractions if isinstance(fractions, list) else [fractions]:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not math.isfinite(fraction):
            raise ConfigError(f"cache fractions must be numbers in (0, 1], got {fraction!r}")
        memory = GpuMemory.plan({"fraction": fraction}, spec, hardware)
        out.append((f"f{fraction:g}", max(int(memory.slots or 0), spec.top_k)))
    return out


def cells(cfg: ValidationConfig, sizes: list[tuple[str, int]]) -> list[Cell]:
    """Every (policy, cache size, batch), policy-major."""
    return [Cell(p, label, slots, b) for p in cfg.policies for label, slots in sizes
            for b in cfg.batches]
