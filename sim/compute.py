"""Compute times: routed experts on the GPU or the host CPU, and a layer's non-expert work.

Each time is a roofline of the hardware (FLOPs over peak, bytes over bandwidth, a minimum per
kernel) plus what the runtime adds (:class:`~sim.system.SystemProfile`: host time, launches,
GPU-side fixed costs, dequantization). Host and GPU work of one layer or one expert overlap (the
host launches asynchronously), so each takes ``max(host, GPU)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from moe_offload_lab.policies.cost import CostModel
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.measured import Curve, Measured
from moe_offload_lab.sim.system import SystemProfile
from moe_offload_lab.traces.spec import ModelSpec

KV_BYTES_PER_VALUE = 2  # bf16 / fp16 KV cache
MLA_LATENT = 512 + 64  # DeepSeek-V2/V3 MLA: kv_lora_rank 512 plus the decoupled rope key, 64


def kv_bytes_per_token(spec: ModelSpec) -> int:
    """KV-cache bytes one token adds in one attention layer: keys and values of the KV heads
    (GQA, MHA), or MLA's compressed latent (``extra.kv_lora_rank`` + ``extra.qk_rope_head_dim``,
    DeepSeek's 512 + 64 by default)."""
    if spec.attention == "mla":
        latent = (int(spec.extra.get("kv_lora_rank", 512))
                  + int(spec.extra.get("qk_rope_head_dim", 64)))
        return latent * KV_BYTES_PER_VALUE
    return 2 * spec.num_kv_heads * spec.head_dim * KV_BYTES_PER_VALUE


@dataclass(frozen=True)
class ComputeModel:
    """Per-layer times of one model on one hardware profile under one runtime (seconds).

    - GPU expert over ``t`` tokens: GPU ``kernels x launch + max(flops(t) / peak,
      expert_bytes / hbm_bw) + dequant`` against host ``dispatch + kernels x host launch``;
    - CPU expert: ``expert_bytes / dram_bw + flops(t) / cpu_peak`` (memory-bound at batch 1);
    - non-expert work of one MoE layer (attention, router, norms, shared experts; the model's
      non-expert weights spread evenly over its MoE layers, served at their own precision): a
      roofline over those weights, the KV cache the batch's attention reads (decode attention
      grows with context) and their FLOPs, plus the runtime's fixed GPU time, dequantization,
      against the runtime's host time per layer.

    ``system`` (None: :meth:`SystemProfile.ideal`, no overheads) adds the runtime's costs. Tables
    measured on this model (:mod:`sim.measured`) replace each time outright, and a measured copy
    table replaces the link's latency and bandwidth; :attr:`measured_used` lists them.
    """

    spec: ModelSpec
    hardware: HardwareProfile
    system: SystemProfile | None = None
    curves: dict[str, Curve] = field(init=False, repr=False)
    link_latency_s: float = field(init=False)
    link_bytes_per_s: float = field(init=False)
    gpu_scale: float = field(init=False)  # GPU-bound runtime costs: this GPU against the reference

    def __post_init__(self) -> None:
        hw = self.hardware
        if self.system is None:
            object.__setattr__(self, "system", SystemProfile.ideal())
        measured = Measured.parse(hw.measured, f"hardware {hw.name!r}")
        curves: dict[str, Curve] = {}
        latency, bandwidth = hw.copy_latency_s, hw.link_bytes_per_s
        if measured is not None:
            for name in ("gpu_expert", "cpu_expert", "layer_other"):
                curve = measured.compute_curve(name, self.spec.name)
                if curve is not None:
                    curves[name] = curve
            fit = measured.link_fit()
            if fit is not None:
                latency, bandwidth = fit
                curves["h2d_copy"] = measured.curves["h2d_copy"]
        object.__setattr__(self, "curves", curves)
        object.__setattr__(self, "link_latency_s", latency)
        object.__setattr__(self, "link_bytes_per_s", bandwidth * self.system.link_fraction())
        object.__setattr__(self, "gpu_scale", self.system.gpu_scale(hw.hbm_gb_per_s))

    @property
    def measured_used(self) -> list[str]:
        """Names of the measured tables that replace the roofline in this model."""
        return sorted(self.curves)

    def _dequant_s(self, params: float, bytes_per_param: float) -> float:
        """Dequantizing ``params`` weights stored at ``bytes_per_param``: their quantized bytes
        at the runtime's dequantization throughput (0 at 2 bytes and up, or when the runtime's
        kernels read quantized weights at full speed)."""
        rate = self.system.dequant_gb_per_s
        if rate <= 0 or bytes_per_param >= 2.0:
            return 0.0
        return params * bytes_per_param / (rate * 1e9) * self.gpu_scale

    def gpu_expert_s(self, tokens: int) -> float:
        """One routed expert's FFN on the GPU over ``tokens`` tokens."""
        if "gpu_expert" in self.curves:
            return self.curves["gpu_expert"](tokens)
        hw, spec, system = self.hardware, self.spec, self.system
        gpu = (system.kernels_per_expert * hw.kernel_launch_s
               + max(spec.expert_flops(tokens) / hw.gpu_flops_per_s,
                     spec.expert_bytes / hw.hbm_bytes_per_s)
               + self._dequant_s(spec.expert_params, spec.expert_bytes_per_param))
        host = system.expert_dispatch_s + system.kernels_per_expert * system.kernel_launch_s
        return max(host, gpu)

    def cpu_expert_s(self, tokens: int) -> float:
        """One routed expert's FFN on the host CPU over ``tokens`` tokens (all cores)."""
        if "cpu_expert" in self.curves:
            return self.curves["cpu_expert"](tokens)
        hw = self.hardware
        return (self.spec.expert_bytes / hw.host_dram_bytes_per_s
                + self.spec.expert_flops(tokens) / hw.cpu_flops_per_s)

    @property
    def cpu_lanes(self) -> int:
        """CPU-placed experts the host runs at once (each at ``1 / lanes`` of its throughput)."""
        return self.system.cpu_lanes(self.hardware.cpu_cores)

    @property
    def layer_other_bytes(self) -> float:
        """Non-expert weight bytes charged to one MoE layer (shared experts included)."""
        spec = self.spec
        return spec.resident_non_expert_bytes / spec.num_moe_layers + spec.shared_expert_bytes

    @property
    def attention_layers_per_moe_layer(self) -> float:
        """Attention blocks charged to one MoE layer (every block has one)."""
        return self.spec.num_layers / self.spec.num_moe_layers

    def layer_other_s(self, tokens: int, context_tokens: int | None = None,
                      kv_tokens: int | None = None) -> float:
        """Non-expert time of one MoE layer for a batch of ``tokens`` tokens.

        ``context_tokens``: the sum over the batch's tokens of the positions each attends to
        (a decode token at position ``p`` attends to ``p + 1``); ``kv_tokens``: the KV-cache
        entries the step reads, per request its longest context (equal to ``context_tokens`` at
        decode). None: no KV cache read (the context is ignored).
        """
        if "layer_other" in self.curves:
            return self.curves["layer_other"](tokens)
        context = context_tokens or 0
        return float(self._layer_other(tokens, context,
                                       context if kv_tokens is None else kv_tokens))

    def layer_other_steps(self, tokens: np.ndarray, context_tokens: np.ndarray,
                          kv_tokens: np.ndarray) -> np.ndarray:
        """:meth:`layer_other_s` of many steps at once (arrays [S] each; returns [S])."""
        if "layer_other" in self.curves:
            curve = self.curves["layer_other"]
            return np.array([curve(t) for t in np.asarray(tokens).tolist()], dtype=np.float64)
        return np.asarray(self._layer_other(np.asarray(tokens, dtype=np.float64),
                                            np.asarray(context_tokens, dtype=np.float64),
                                            np.asarray(kv_tokens, dtype=np.float64)),
                          dtype=np.float64)

    def _layer_other(self, tokens: Any, context: Any, kv: Any) -> Any:
        """The roofline of :meth:`layer_other_s` on scalars or arrays alike."""
        hw, spec, system = self.hardware, self.spec, self.system
        per_moe = self.attention_layers_per_moe_layer
        params = (spec.non_expert_params / spec.num_moe_layers
                  + spec.shared_expert_bytes / spec.expert_bytes_per_param)
        heads = spec.num_attention_heads * spec.head_dim
        flops = 2.0 * params * tokens + 4.0 * heads * context * per_moe  # QK^T and PV
        read_bytes = self.layer_other_bytes + kv * kv_bytes_per_token(spec) * per_moe
        nebpp = spec.non_expert_bytes_per_param or 2.0
        gpu = (system.kernels_per_layer * hw.kernel_launch_s
               + np.maximum(flops / hw.gpu_flops_per_s, read_bytes / hw.hbm_bytes_per_s)
               + system.layer_overhead_s * self.gpu_scale
               + self._dequant_s(spec.non_expert_params / spec.num_moe_layers, nebpp))
        host = system.host_layer_s + system.kernels_per_layer * system.kernel_launch_s
        return np.maximum(host, gpu)

    def copy_s(self, num_bytes: int) -> float:
        """One host-to-device copy: per-copy latency plus bytes over link bandwidth."""
        return self.link_latency_s + num_bytes / self.link_bytes_per_s

    def cost_model(self) -> CostModel:
        """The planning figures handed to ``Policy.reset`` (consistent with this model)."""
        hw, spec = self.hardware, self.spec
        cpu_per_token = spec.expert_flops(1) / hw.cpu_flops_per_s
        cpu_fixed = spec.expert_bytes / hw.host_dram_bytes_per_s
        per_token_gpu = spec.expert_flops(1) / hw.gpu_flops_per_s
        gpu_fixed = self.gpu_expert_s(0)  # weights read, launches, dequant, host dispatch
        if "gpu_expert" in self.curves:  # a line through the table's 1- and 2-token points
            gpu_fixed, per_token_gpu = self._affine(self.gpu_expert_s)
        if "cpu_expert" in self.curves:
            cpu_fixed, cpu_per_token = self._affine(self.cpu_expert_s)
        return CostModel(
            link_bytes_per_s=self.link_bytes_per_s,
            copy_latency_s=self.link_latency_s,
            expert_bytes=spec.expert_bytes,
            gpu_expert_s_per_token=per_token_gpu,
            gpu_expert_fixed_s=gpu_fixed,
            cpu_expert_s_per_token=cpu_per_token,
            cpu_expert_fixed_s=cpu_fixed,
            layer_other_s=self.layer_other_s(1),
        )

    @staticmethod
    def _affine(time_s: Callable[[int], float]) -> tuple[float, float]:
        """``(fixed_s, per_token_s)`` of the line through a time curve at 1 and 2 tokens."""
        one, two = time_s(1), time_s(2)
        per_token = max(0.0, two - one)
        return max(0.0, one - per_token), per_token
