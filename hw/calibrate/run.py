"""A whole calibration: measure everything, build the profile mapping, check the simulator loads
it, write it (see :mod:`hw.calibrate.profile` for what goes where)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from moe_offload_lab.hw.calibrate import compute as timing
from moe_offload_lab.hw.calibrate import executor_timing
from moe_offload_lab.hw.calibrate.copies import MB, measure_copies, small_copy_seconds
from moe_offload_lab.hw.calibrate.devices import (
    device_properties,
    host_memory_gib,
    parse_dtype,
    provenance,
    resolve_device,
)
from moe_offload_lab.hw.calibrate.policy_cost import decision_seconds, policy_trace
from moe_offload_lab.hw.calibrate.profile import (
    base_fields,
    check_loads,
    sidecar_path,
    write_profile,
)
from moe_offload_lab.sim.hardware import HardwareProfile, load_hardware
from moe_offload_lab.traces.catalog import check_fields, conf_dir, load_model
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec
from tqdm.auto import tqdm

GPU_SIZES_MB = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
CPU_SIZES_MB = [0.25, 1, 4, 16, 64]


@dataclass
class CalibrationConfig:
    """What to measure (``conf/hw/calibrate.yaml`` documents every field)."""

    device: str = "auto"
    dtype: str = "auto"
    base_profile: str | None = None
    model: str = "mixtral-8x7b"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    sizes_mb: list[float] | None = None
    tokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256])
    batches: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    contexts: list[int] = field(default_factory=lambda: [128, 512, 2048])
    reference_context: int = 512
    repeats: int = 10
    warmup: int = 2
    policies: list[str] = field(default_factory=lambda: ["lru", "lfu", "gate-lookahead"])
    policy_tokens: int = 64
    peak_figures: bool = True
    source: str = "auto"
    executor_overhead_policy: str | None = "lru"
    name: str | None = None
    out: str | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationConfig:
        """From a composed mapping; unknown keys and wrong types are one-line errors."""
        check_fields(cls, data, "calibrate", required=())
        cfg = cls(**data)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Validate the numbers (one-line ConfigErrors)."""
        def positive_ints(name: str, values: Any) -> None:
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                raise ConfigError(f"{name} must be a non-empty list of positive integers, "
                                  f"got {values!r}")
        for name in ("tokens", "batches", "contexts"):
            positive_ints(name, getattr(self, name))
        for name in ("repeats", "reference_context", "policy_tokens"):
            positive_ints(name, [getattr(self, name)])
        if self.sizes_mb is not None and (not isinstance(self.sizes_mb, list) or len(
                self.sizes_mb) < 2 or not all(isinstance(v, (int, float)) and not isinstance(
                    v, bool) and math.isfinite(v) and v > 0 for v in self.sizes_mb)):
            raise ConfigError(f"sizes_mb must list at least two positive sizes, "
                              f"got {self.sizes_mb!r}")
        if self.source not in ("auto", "executor", "module"):
            raise ConfigError(f"source must be auto, executor or module, got {self.source!r}")
        if not isinstance(self.policies, list) or not all(isinstance(p, str)
                                                          for p in self.policies):
            raise ConfigError(f"policies must be a list of policy names, got {self.policies!r}")


@dataclass
class Calibration:
    """The written profile mapping, its sidecar, and the files."""

    profile: dict[str, Any]
    sidecar: dict[str, Any]
    paths: list[Path]
    measured_used: list[str]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def _spec(cfg: CalibrationConfig) -> ModelSpec:
    return load_model(cfg.model, **(cfg.model_overrides or {}))


def _base(cfg: CalibrationConfig, device: torch.device, dtype: torch.dtype,
          props: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Base profile fields (named profile, else device properties plus quick peak figures) and
    the peak figures measured for it."""
    if cfg.base_profile:
        return base_fields(load_hardware(cfg.base_profile)), {}
    peaks: dict[str, Any] = {}
    if cfg.peak_figures:
        size = 4096 if device.type == "cuda" else 512
        peaks["matmul_tflops"] = timing.matmul_tflops(device, dtype, size, max(3, cfg.repeats))
        mem_bytes = (1 << 30) if device.type == "cuda" else (64 << 20)
        peaks["memory_gb_per_s"] = timing.memory_gb_per_s(device, mem_bytes, max(3, cfg.repeats))
    cores = os.cpu_count() or 1
    fields = {
        "name": _slug(props["name"]),
        "gpu_mem_gib": round(float(props["memory_gib"]), 3),
        "gpu_tflops": round(peaks.get("matmul_tflops", 1.0), 4) or 1e-3,
        "hbm_gb_per_s": round(peaks.get("memory_gb_per_s", 100.0), 3) or 1e-3,
        "link_gb_per_s": 1.0,  # replaced by the copy fit
        "cpu_cores": cores,
        "host_dram_gib": round(host_memory_gib(), 3),
    }
    if device.type == "cpu":  # the twin: the "GPU" is this CPU
        fields["cpu_tflops"] = fields["gpu_tflops"]
        fields["host_dram_gb_per_s"] = fields["hbm_gb_per_s"]
    return fields, peaks


def calibrate(cfg: CalibrationConfig) -> Calibration:
    """Measure, assemble, check and write one calibrated profile."""
    cfg.check()
    device = resolve_device(cfg.device)
    dtype = parse_dtype(cfg.dtype, device)
    spec = _spec(cfg)
    if cfg.base_profile:
        load_hardware(cfg.base_profile)  # unknown names fail before any measurement
    for name in cfg.policies:
        from moe_offload_lab.policies.config import build_policy

        build_policy(name)
    props = device_properties(device)
    host = torch.device("cpu")
    twin = device.type == "cpu"
    sizes_mb = cfg.sizes_mb or (GPU_SIZES_MB if device.type == "cuda" else CPU_SIZES_MB)
    sizes = sorted({max(1, int(mb * MB)) for mb in sizes_mb})
    steps = 5 + len(cfg.policies) + (0 if twin else 1)
    bar = tqdm(total=steps, desc="calibrate", disable=not cfg.progress, leave=False)

    def done(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    copies = measure_copies(sizes, device, cfg.repeats, cfg.warmup)
    try:
        latency_s, bytes_per_s = copies.fit()
    except ConfigError:  # a noisy machine: measure once more with more repeats
        copies = measure_copies(sizes, device, 4 * cfg.repeats, cfg.warmup + 2)
        try:
            latency_s, bytes_per_s = copies.fit()
        except ConfigError:
            raise ConfigError(f"copy times do not grow with size ({copies.seconds}): the "
                              f"machine is too noisy for sizes_mb={sizes_mb}; raise repeats or "
                              f"use larger sizes") from None
    small_s = small_copy_seconds(device, cfg.repeats)
    done("copies")
    source = cfg.source
    if source == "auto":
        source = "executor" if executor_timing.available() else "module"
    if source == "executor" and not executor_timing.available():
        raise ConfigError("source=executor needs the executor (hw.replay, hw.store)")
    expert_fn = executor_timing.expert_seconds if source == "executor" else timing.expert_seconds
    tokens = sorted(set(cfg.tokens))  # the simulator's tables need increasing x
    gpu_expert = expert_fn(spec, tokens, device, dtype, cfg.repeats, cfg.warmup)
    done("expert")
    if twin:
        cpu_expert = gpu_expert
    else:  # the executor's CPU fallback computes from the host copy, in the store's dtype
        host_dtype = parse_dtype(cfg.dtype, host) if cfg.dtype != "auto" else dtype
        cpu_expert = expert_fn(spec, tokens, host, host_dtype, cfg.repeats, cfg.warmup)
        done("cpu expert")
    batches = sorted(set(cfg.batches))
    contexts = sorted(set(cfg.contexts) | {cfg.reference_context})
    attention = timing.non_expert_seconds(spec, batches, contexts, device, dtype, cfg.repeats,
                                          cfg.warmup)
    done("attention")
    ref = contexts.index(cfg.reference_context)
    replay_table = None
    executor_other: dict[str, list[float]] | None = None
    if source == "executor":
        replay_table = executor_timing.replay_layer_seconds(spec, batches, contexts, device,
                                                            cfg.repeats, cfg.warmup)
        executor_other = executor_timing.executor_layer_other(
            spec, batches, device, cfg.executor_overhead_policy)
        layer_other = {"tokens": batches, "seconds": [
            o + h for o, h in zip(executor_other["other_s"], executor_other["overhead_s"],
                                  strict=True)]}
    else:
        layer_other = {"tokens": batches, "seconds": [row[ref] for row in attention]}
    router = timing.router_seconds(spec, tokens, device, dtype, cfg.repeats, cfg.warmup)
    done("router")
    policy_times: dict[str, Any] = {}
    if cfg.policies:
        trace = policy_trace(spec, cfg.policy_tokens)
        for name in cfg.policies:
            policy_times[name] = decision_seconds(name, trace)
            done(f"policy {name}")
    fields, peaks = _base(cfg, device, dtype, props)
    done("peaks")
    bar.close()

    name = cfg.name or (f"{fields['name']}-calibrated" if cfg.base_profile else fields["name"])
    fields["name"] = name
    fields["link_gb_per_s"] = bytes_per_s / 1e9
    fields["copy_latency_s"] = small_s  # the fit's intercept replaces it in the simulator
    prov = provenance(device)
    prov.update({
        "dtype": str(dtype).removeprefix("torch."),
        "base_profile": cfg.base_profile,
        "gpu_expert_measured_on": "cpu (CPU twin: CPU figures)" if twin else device.type,
        "layer_other_context": cfg.reference_context,
        "source": source,
        "layer_other_measured": ("the executor's non-expert events plus its host time per "
                                 "layer in short replays (decode steps, the context of a short "
                                 "request)" if executor_other else
                                 f"a batched GQA layer at context {cfg.reference_context}"),
        "executor_layer_other": executor_other,
        "h2d_fit": {"latency_s": latency_s, "gb_per_s": bytes_per_s / 1e9},
        "h2d_peak_gb_per_s": copies.peak_bytes_per_s / 1e9,
        "h2d_small_copy_s": small_s,
        "h2d_source": "pinned host memory" if not twin else "host memory (plain copy, CPU twin)",
        "peak_figures": peaks,
        "sidecar": None,
        "tables": {
            "attention": {"batch": batches, "context": contexts, "seconds": attention},
            "replay_layer": None if replay_table is None else {
                "batch": batches, "context": contexts, "seconds": replay_table},
            "router": {"tokens": tokens, "seconds": router},
            "policy_decision_per_layer_s": {k: v["per_layer_s"] for k, v in policy_times.items()},
        },
    })
    measured = {
        "model": spec.name,
        "h2d_copy": copies.table(),
        "gpu_expert": {"tokens": tokens, "seconds": gpu_expert},
        "cpu_expert": {"tokens": tokens, "seconds": cpu_expert},
        "layer_other": layer_other,
        "provenance": prov,
    }
    profile = {**fields, "measured": measured}
    path = Path(cfg.out) if cfg.out else conf_dir() / "hardware" / f"{name}.yaml"
    prov["sidecar"] = sidecar_path(path).name
    used = check_loads(profile, spec, f"calibrated profile {name!r}")
    sidecar = {"profile": name, "model": spec.to_dict(), "config": cfg.__dict__,
               "measured": measured, "policy_decision": policy_times,
               "copy_sizes_mb": [s / MB for s in sizes]}
    paths = write_profile(path, _plain(profile), _plain(sidecar))
    return Calibration(profile, sidecar, paths, used)


def _plain(value: Any) -> Any:
    """Python scalars and lists only (YAML-safe)."""
    if isinstance(value, str):
        return str(value)  # str subclasses such as torch's version
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, float):
        return float(value)
    return value


def load_profile(path: str | Path) -> HardwareProfile:
    """A written profile as the simulator loads it."""
    return load_hardware(str(path))
