"""Roofline compute times: routed experts on the GPU or the host CPU, and non-expert work."""

from __future__ import annotations

from dataclasses import dataclass

from policies.cost import CostModel
from sim.hardware import HardwareProfile
from traces.spec import ModelSpec


@dataclass(frozen=True)
class ComputeModel:
    """Per-layer times of one model on one hardware profile (all in seconds).

    - GPU expert over ``t`` tokens: ``launch + max(flops(t) / peak, expert_bytes / hbm_bw)``;
    - CPU expert: ``expert_bytes / dram_bw + flops(t) / cpu_peak`` (memory-bound at batch 1);
    - non-expert work of one MoE layer (attention, router, norms, shared experts; the model's
      ``non_expert_bytes`` spread evenly over its MoE layers): roofline of those bytes and their
      FLOPs (two per parameter per token) plus one launch.
    """

    spec: ModelSpec
    hardware: HardwareProfile

    def gpu_expert_s(self, tokens: int) -> float:
        """One routed expert's FFN on the GPU over ``tokens`` tokens."""
        hw = self.hardware
        return hw.kernel_launch_s + max(self.spec.expert_flops(tokens) / hw.gpu_flops_per_s,
                                        self.spec.expert_bytes / hw.hbm_bytes_per_s)

    def cpu_expert_s(self, tokens: int) -> float:
        """One routed expert's FFN on the host CPU over ``tokens`` tokens."""
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
        hw = self.hardware
        weight_bytes = self.layer_other_bytes
        flops = 2.0 * weight_bytes / self.spec.expert_bytes_per_param * tokens
        return hw.kernel_launch_s + max(flops / hw.gpu_flops_per_s,
                                        weight_bytes / hw.hbm_bytes_per_s)

    def copy_s(self, num_bytes: int) -> float:
        """One host-to-device copy: per-copy latency plus bytes over link bandwidth."""
        hw = self.hardware
        return hw.copy_latency_s + num_bytes / hw.link_bytes_per_s

    def cost_model(self) -> CostModel:
        """The planning figures handed to ``Policy.reset`` (consistent with this model)."""
        hw, spec = self.hardware, self.spec
        per_token_gpu = spec.expert_flops(1) / hw.gpu_flops_per_s
        return CostModel(
            link_bytes_per_s=hw.link_bytes_per_s,
            copy_latency_s=hw.copy_latency_s,
            expert_bytes=spec.expert_bytes,
            gpu_expert_s_per_token=per_token_gpu,
            gpu_expert_fixed_s=hw.kernel_launch_s + spec.expert_bytes / hw.hbm_bytes_per_s,
            cpu_expert_s_per_token=spec.expert_flops(1) / hw.cpu_flops_per_s,
            cpu_expert_fixed_s=spec.expert_bytes / hw.host_dram_bytes_per_s,
            layer_other_s=self.layer_other_s(1),
        )
