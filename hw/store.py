"""ExpertStore: every routed expert's weights in host memory, one contiguous buffer per expert.

The store is one host tensor ``[K, P]`` (``K = num_moe_layers * num_experts`` keys, ``P`` the
parameters of one expert) allocated at once and pinned when CUDA is available, so row ``key`` is
the expert's single contiguous buffer and a fetch is one copy. An expert's buffer holds its
matrices flattened back to back: gated (SwiGLU, ``expert_matrices == 3``) ``gate [I, H]``,
``up [I, H]``, ``down [H, I]``; plain FFN (``expert_matrices == 2``) ``up [I, H]``, ``down [H, I]``.
:func:`unpack` gives views of the matrices of any such buffer (store row, device slot or scratch).
Expert biases are not modelled. Shared experts and non-expert weights are not here: they stay
resident on the device (:mod:`hw.replay`).
"""

from __future__ import annotations

import torch
from moe_offload_lab.hw.device import Device
from moe_offload_lab.traces.spec import ModelSpec


def expert_numel(spec: ModelSpec) -> int:
    """Elements of one expert's buffer."""
    return spec.expert_matrices * spec.hidden_size * spec.expert_intermediate_size


def unpack(buffer: torch.Tensor, hidden: int, inter: int, matrices: int
           ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Views (gate or None, up, down) of one expert buffer ``[P]``."""
    n = hidden * inter
    if matrices == 3:
        gate = buffer[:n].view(inter, hidden)  # [I, H]
        up = buffer[n:2 * n].view(inter, hidden)  # [I, H]
        down = buffer[2 * n:3 * n].view(hidden, inter)  # [H, I]
        return gate, up, down
    up = buffer[:n].view(inter, hidden)  # [I, H]
    down = buffer[n:2 * n].view(hidden, inter)  # [H, I]
    return None, up, down


def expert_ffn(x: torch.Tensor, buffer: torch.Tensor, hidden: int, inter: int,
               matrices: int) -> torch.Tensor:
    """One expert on its tokens: ``x`` [T, H] -> [T, H] (SwiGLU, or ReLU for 2 matrices).

    The same function runs on device slots, scratch buffers and host rows, so every placement
    computes the same numbers.
    """
    gate, up, down = unpack(buffer, hidden, inter, matrices)
    h = torch.nn.functional.linear(x, up)  # [T, I]
    if gate is not None:
        h = torch.nn.functional.silu(torch.nn.functional.linear(x, gate)) * h
    else:
        h = torch.relu(h)
    return torch.nn.functional.linear(h, down)  # [T, H]


class ExpertStore:
    """Host copies of all routed experts (see module docstring); random weights, seeded."""

    def __init__(self, spec: ModelSpec, device: Device, seed: int = 0) -> None:
        self.spec = spec
        self.hidden, self.inter = spec.hidden_size, spec.expert_intermediate_size
        self.matrices = spec.expert_matrices
        self.numel = expert_numel(spec)
        self.num_keys = spec.num_expert_keys
        dtype = device.dtype
        gen = torch.Generator().manual_seed(seed)
        host = torch.empty(self.num_keys, self.numel, dtype=dtype)  # [K, P]
        n = self.hidden * self.inter
        scale_in, scale_out = self.hidden ** -0.5, self.inter ** -0.5
        for key in range(self.num_keys):  # one key at a time: float32 scratch stays small
            row = torch.randn(self.numel, generator=gen)  # [P]
            row[: n * (self.matrices - 1)] *= scale_in
            row[n * (self.matrices - 1):] *= scale_out
            host[key].copy_(row)
        self.host = device.pin(host)  # [K, P], pinned when CUDA is available
        self.pinned = self.host.is_pinned() if torch.cuda.is_available() else False
        self.bytes_per_expert = self.numel * self.host.element_size()

    def buffer(self, key: int) -> torch.Tensor:
        """The host buffer [P] of expert ``key`` (a row: one contiguous block)."""
        return self.host[key]

    def compute(self, key: int, x: torch.Tensor) -> torch.Tensor:
        """Run expert ``key`` on the host from its host weights: ``x`` [T, H] -> [T, H]."""
        return expert_ffn(x, self.host[key], self.hidden, self.inter, self.matrices)
