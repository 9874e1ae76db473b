"""What things cost: the hardware figures cost-aware policies plan with, and a policy's own cost.

:class:`CostModel` is the policy's belief about the hardware (link, GPU and CPU expert compute);
engines build it from their hardware profile and pass it to ``Policy.reset``. :class:`DecisionCost`
is what a policy declares about itself, so engines can charge its decision time.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec

_WHERE = ("cpu", "gpu")


@dataclass(frozen=True)
class CostModel:
    """Hardware figures for planning, all in bytes and seconds.

    - ``link_bytes_per_s``, ``copy_latency_s``: the host-to-device link and the fixed cost of one
      copy (about 5-7 us per ``cudaMemcpyAsync``);
    - ``expert_bytes``: bytes of one routed expert (``ModelSpec.expert_bytes``);
    - ``gpu_expert_s_per_token``, ``gpu_expert_fixed_s``: one expert's FFN time on the GPU for
      ``t`` tokens is ``fixed + t * per_token``; ``cpu_expert_*`` the same on the host CPU;
    - ``layer_other_s``: non-expert time of one layer (attention, router, norms), used to estimate
      how long until a later layer runs.
    """

    link_bytes_per_s: float
    copy_latency_s: float
    expert_bytes: int
    gpu_expert_s_per_token: float
    gpu_expert_fixed_s: float
    cpu_expert_s_per_token: float
    cpu_expert_fixed_s: float
    layer_other_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.link_bytes_per_s > 0:
            raise ConfigError(f"cost model: link_bytes_per_s must be positive, got "
                              f"{self.link_bytes_per_s!r}")
        if not self.expert_bytes > 0:
            raise ConfigError(f"cost model: expert_bytes must be positive, got "
                              f"{self.expert_bytes!r}")
        for name in ("copy_latency_s", "gpu_expert_s_per_token", "gpu_expert_fixed_s",
                     "cpu_expert_s_per_token", "cpu_expert_fixed_s", "layer_other_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"cost model: {name} must not be negative, got {value!r}")

    def transfer_s(self, experts: int = 1) -> float:
        """Seconds to copy ``experts`` experts host-to-device, one copy each."""
        return experts * (self.copy_latency_s + self.expert_bytes / self.link_bytes_per_s)

    def gpu_expert_s(self, tokens: int) -> float:
        """Seconds for one expert's FFN on the GPU over ``tokens`` tokens."""
        return self.gpu_expert_fixed_s + tokens * self.gpu_expert_s_per_token

    def cpu_expert_s(self, tokens: int) -> float:
        """Seconds for one expert's FFN on the CPU over ``tokens`` tokens."""
        return self.cpu_expert_fixed_s + tokens * self.cpu_expert_s_per_token

    @classmethod
    def for_spec(cls, spec: ModelSpec, *, link_bytes_per_s: float = 25e9,
                 copy_latency_s: float = 6e-6, gpu_flops_per_s: float = 165e12,
                 gpu_mem_bytes_per_s: float = 1.0e12, cpu_flops_per_s: float = 1.0e12,
                 cpu_mem_bytes_per_s: float = 90e9, layer_other_s: float = 1e-4) -> CostModel:
        """Rough roofline defaults (PCIe 4 link, an RTX 4090-class GPU, a two-channel DDR5 host).

        Reading the weights once is the fixed cost; FLOPs per token the variable one. Calibrated
        hardware profiles from the simulator or the executor should replace these figures.
        """
        flops_per_token = spec.expert_flops(1)
        return cls(
            link_bytes_per_s=link_bytes_per_s,
            copy_latency_s=copy_latency_s,
            expert_bytes=spec.expert_bytes,
            gpu_expert_s_per_token=flops_per_token / gpu_flops_per_s,
            gpu_expert_fixed_s=spec.expert_bytes / gpu_mem_bytes_per_s,
            cpu_expert_s_per_token=flops_per_token / cpu_flops_per_s,
            cpu_expert_fixed_s=spec.expert_bytes / cpu_mem_bytes_per_s,
            layer_other_s=layer_other_s,
        )


@dataclass(frozen=True)
class DecisionCost:
    """Time one layer's worth of policy calls takes, as the policy declares it.

    ``where`` is the device the decision runs on (``"cpu"`` or ``"gpu"``); an engine charges
    :meth:`seconds` once per MoE layer to that resource.
    """

    where: str = "cpu"
    fixed_s: float = 0.0
    per_token_s: float = 0.0

    def __post_init__(self) -> None:
        if self.where not in _WHERE:
            raise ConfigError(f"decision cost: where must be one of {_WHERE}, got {self.where!r}")
        if not (self.fixed_s >= 0 and self.per_token_s >= 0):
            raise ConfigError("decision cost: fixed_s and per_token_s must not be negative")

    def seconds(self, batch_tokens: int) -> float:
        """Seconds per MoE layer for a batch of ``batch_tokens`` tokens."""
        return self.fixed_s + batch_tokens * self.per_token_s

    def __add__(self, other: DecisionCost) -> DecisionCost:
        where = "gpu" if "gpu" in (self.where, other.where) else "cpu"
        return DecisionCost(where, self.fixed_s + other.fixed_s,
                            self.per_token_s + other.per_token_s)
