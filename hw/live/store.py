"""The live model's routed experts in host memory, one contiguous buffer per expert.

:class:`LiveExpertStore` is an :class:`~hw.store.ExpertStore` filled from a model's weights
(:func:`hw.live.adapters.expert_rows`) instead of random numbers. Its :meth:`ffn` is the
architecture's exact expert function on any buffer (store row, device slot, scratch), written with
the same operations as transformers' fused expert loop, so the float32 CPU results are bitwise
those of the original model; the executor calls it when a store has one.
"""

from __future__ import annotations

from typing import Any

import torch
from moe_offload_lab.hw.device import Device
from moe_offload_lab.hw.live.adapters import GPT_OSS, LiveArch, expert_rows
from moe_offload_lab.hw.store import ExpertStore
from moe_offload_lab.traces.spec import ModelSpec


class LiveExpertStore(ExpertStore):
    """Host copies ``[K, P]`` of a live model's routed experts (row ``layer * E + expert``)."""

    def __init__(self, spec: ModelSpec, device: Device, arch: LiveArch) -> None:
        # no super().__init__: that one draws random weights
        self.spec = spec
        self.hidden, self.inter = spec.hidden_size, spec.expert_intermediate_size
        self.matrices = spec.expert_matrices
        self.num_keys = spec.num_expert_keys
        self.kind = arch.expert_kind
        first = arch.modules[0].experts
        self.act_fn = getattr(first, "act_fn", None)  # swiglu: config.hidden_act
        self.alpha = float(getattr(first, "alpha", 0.0))  # gpt-oss
        self.limit = float(getattr(first, "limit", 0.0))  # gpt-oss
        rows = [expert_rows(arch, m) for m in arch.modules]  # L x [E, P]
        self.numel = rows[0].shape[1]
        host = torch.empty(self.num_keys, self.numel, dtype=device.dtype)  # [K, P]
        for layer, r in enumerate(rows):
            host[layer * spec.num_experts:(layer + 1) * spec.num_experts].copy_(r)
        self.host = device.pin(host)
        self.pinned = self.host.is_pinned() if torch.cuda.is_available() else False
        self.bytes_per_expert = self.numel * self.host.element_size()

    def ffn(self, x: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        """One expert on its tokens: ``x`` [T, H] -> [T, H] from ``buffer`` [P]."""
        h, i = self.hidden, self.inter
        if self.kind == GPT_OSS:
            n = h * 2 * i
            gate_up_w = buffer[:n].view(h, 2 * i)  # [H, 2I], gate/up interleaved
            gate_up_b = buffer[n:n + 2 * i]  # [2I]
            down_w = buffer[n + 2 * i:n + 2 * i + i * h].view(i, h)  # [I, H]
            down_b = buffer[n + 2 * i + i * h:]  # [H]
            gate_up = x @ gate_up_w + gate_up_b  # [T, 2I]
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]  # [T, I] each
            gate = gate.clamp(min=None, max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
            glu = gate * torch.sigmoid(gate * self.alpha)
            return ((up + 1) * glu) @ down_w + down_b  # [T, H]
        n = h * i
        gate_up_w = buffer[:2 * n].view(2 * i, h)  # [2I, H], gate rows first
        down_w = buffer[2 * n:3 * n].view(h, i)  # [H, I]
        gate, up = torch.nn.functional.linear(x, gate_up_w).chunk(2, dim=-1)  # [T, I] each
        return torch.nn.functional.linear(self.act_fn(gate) * up, down_w)  # [T, H]

    def compute(self, key: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``key`` on the host from its host weights: ``x`` [T, H] -> [T, H]."""
        return self.ffn(x, self.host[key])

    def describe(self) -> dict[str, Any]:
        """Store facts for a run summary."""
        return {"expert_kind": self.kind, "expert_numel": self.numel}
