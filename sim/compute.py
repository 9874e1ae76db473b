"""Roofline compute times: routed experts on the GPU or the host CPU, and non-expert work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from moe_offload_lab.policies.cost import CostModel
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.measured import Curve, Measured
from moe_offload_lab.traces.spec import ModelSpec


@dataclass(frozen=True)
class ComputeModel:
    """Per-layer times of one model on one hardware profile (all in seconds).

    - GPU expert over ``t`` tokens: ``launch + max(flops(t) / peak, expert_bytes / hbm_bw)``;
    - CPU expert: ``expert_bytes / dram_bw + flops(t) / cpu_peak`` (memory-bound at batch 1);
    - non-expert work of one MoE layer (attention, router, norms, shared experts; the model's
      ``non_expert_bytes`` spread evenly over its MoE layers): roofline of those bytes and their
      FLOPs (two per parameter per token) plus one launch.

    Tables measured on this model (:mod:`sim.measured`) replace each of these, and a measured
    copy table replaces the link's latency and bandwidth; :attr:`measured_used` lists them.
    """

    spec: ModelSpec
    hardware: HardwareProfile
    curves: dict[str, Curve] = field(init=False, repr=False)
    link_latency_s: float = field(init=False)
    link_bytes_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        hw = self.hardware
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
        object.__setattr__(self, "link_bytes_per_s", bandwidth)

    @property
    def measured_used(self) -> list[str]:
        """Names of the measured tables that replace the roofline in this model."""
        return sorted(self.curves)

    def gpu_expert_s(self, tokens: int) -> float:
        """One routed expert's FFN on the GPU over ``tokens`` tokens."""
        if "gpu_expert" in self.curves:
            return self.curves["gpu_expert"](tokens)
        hw = self.hardware
        return hw.kernel_launch_s + max(self.spec.expert_flops(tokens) / hw.gpu_flops_per_s,
                                        self.spec.expert_bytes / hw.hbm_bytes_per_s)

    def cpu_expert_s(self, tokens: int) -> float:
        """One routed expert's FFN on the host CPU over ``tokens`` tokens."""
        if "cpu_expert" in self.curves:
            return self.curves["cpu_expert"](tokens)
        hw = self.hardware
        return (self.spec.expert_bytes / hw.host_dram_bytes_per_s
                + self.spec.expert_flops(tokens) / hw.cpu_flops_per_s)

    @property
    def layer_other_bytes(self) -> float:
        """Non-expert weight bytes charged to one MoE layer (shared experts included)."""
        spec = self.spec
        return spec.non_expert_bytes / spec.num_moe_layers + spec.shared_expert_bytes

    def layer_other_s(self, tokens: int) -> float:
        """Non-expert time of one MoE layer for a batch of ``tokens`` tokens."""
        if "layer_other" in self.curves:
            return self.curves["layer_other"](tokens)
        hw = self.hardware
        weight_bytes = self.layer_other_bytes
        flops = 2.0 * weight_bytes / self.spec.expert_bytes_per_param * tokens
        return hw.kernel_launch_s + max(flops / hw.gpu_flops_per_s,
                                        weight_bytes / hw.hbm_bytes_per_s)

    def copy_s(self, num_bytes: int) -> float:
        """One host-to-device copy: per-copy latency plus bytes over link bandwidth."""
        return self.link_latency_s + num_bytes / self.link_bytes_per_s

    def cost_model(self) -> CostModel:
        """The planning figures handed to ``Policy.reset`` (consistent with this model)."""
        hw, spec = self.hardware, self.spec
        per_token_gpu = spec.expert_flops(1) / hw.gpu_flops_per_s
        gpu_fixed = hw.kernel_launch_s + spec.expert_bytes / hw.hbm_bytes_per_s
        cpu_per_token = spec.expert_flops(1) / hw.cpu_flops_per_s
        cpu_fixed = spec.expert_bytes / hw.host_dram_bytes_per_s
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
