"""The live model's routed experts in host memory, one contiguous buffer per expert.

:class:`LiveExpertStore` is an :class:`~hw.store.ExpertStore` filled from a model's weights
(:func:`hw.live.adapters.expert_rows`) instead of random numbers. Its :meth:`ffn` is the expert
function of transformers' experts interface applied to one expert's buffer (store row, device slot
or scratch): the up (or gate-up) projection, ``x @ W`` for transposed weights or
``linear(x, W)`` otherwise, plus the bias; the module's own ``_apply_gate`` (its activation
without a gate); the down projection; the post-expert norm when the model has one. These are the
operations of transformers' per-expert kernels, so float32 CPU results match the original model
up to the order in which an expert's rows are gathered (see ``tests/hw/live``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from moe_offload_lab.hw.device import Device
from moe_offload_lab.hw.live.adapters import LiveArch, expert_rows
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
        self.layout = arch.layout
        self.module = arch.experts[0]  # its _apply_gate / act_fn / norm serve every layer
        rows = [expert_rows(arch, m) for m in arch.experts]  # L x [E, P]
        self.numel = rows[0].shape[1]
        host = torch.empty(self.num_keys, self.numel, dtype=device.dtype)  # [K, P]
        for layer, r in enumerate(rows):
            host[layer * spec.num_experts:(layer + 1) * spec.num_experts].copy_(r)
        self.host = device.pin(host)
        self.pinned = self.host.is_pinned() if torch.cuda.is_available() else False
        self.bytes_per_expert = self.numel * self.host.element_size()
        self._views = []  # (start, end, shape) of each part in a buffer
        start = 0
        for _, shape in self.layout.parts:
            end = start + int(torch.Size(shape).numel())
            self._views.append((start, end, shape))
            start = end

    def _project(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        if self.layout.is_transposed:
            out = x @ weight  # weight [in, out]
            return out + bias if bias is not None else out
        return torch.nn.functional.linear(x, weight, bias)  # weight [out, in]

    def ffn(self, x: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        """One expert on its tokens: ``x`` [T, H] -> [T, H] from ``buffer`` [P]."""
        parts = [buffer[a:b].view(shape) for a, b, shape in self._views]
        if self.layout.has_bias:
            up_w, up_b, down_w, down_b = parts
        else:
            (up_w, down_w), up_b, down_b = parts, None, None
        hidden = self._project(x, up_w, up_b)  # [T, 2I] (gated) or [T, I]
        module = self.module
        hidden = module._apply_gate(hidden) if self.layout.has_gate else module.act_fn(hidden)
        out = self._project(hidden, down_w, down_b)  # [T, H]
        if self.layout.has_post_expert_norm:
            out = self._norm_on(out.device)(out)
        return out

    def _norm_on(self, device: torch.device) -> Any:
        """The experts' post-expert norm with its weights on ``device`` (copied once)."""
        norms = self.__dict__.setdefault("_norms", {})
        if device not in norms:
            norms[device] = copy.deepcopy(self.module.post_expert_norm).to(device)
        return norms[device]

    def compute(self, key: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``key`` on the host from its host weights: ``x`` [T, H] -> [T, H]."""
        return self.ffn(x, self.host[key])

    def describe(self) -> dict[str, Any]:
        """Store facts for a run summary."""
        return {"expert_kind": type(self.module).__name__, "expert_numel": self.numel,
                "expert_layout": [name for name, _ in self.layout.parts]}
