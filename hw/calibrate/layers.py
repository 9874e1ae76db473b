"""The torch modules a calibration times, shaped by a ModelSpec (random weights: timing only).

- :class:`ExpertFFN`: one routed expert, SwiGLU ``w2(silu(w1 x) * w3 x)`` (a plain two-matrix
  FFN with GELU when the spec says ``expert_matrices: 2``);
- :class:`NonExpertLayer`: one MoE layer's non-expert decode work: RMSNorm, GQA attention over a
  KV cache of ``context`` positions (the new token's K/V written into the cache), output
  projection and residual, RMSNorm, router logits and top-k;
- :class:`Router`: the router alone (linear, softmax, top-k).

MLA models are timed as GQA with the spec's head counts (an approximation). Specs without head
counts get ``hidden / 128`` heads of 128 (at least one) and as many KV heads.
"""

from __future__ import annotations

import torch
from moe_offload_lab.traces.spec import ModelSpec
from torch import nn
from torch.nn import functional as F  # noqa: N812


def attention_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """``(heads, kv_heads, head_dim)`` of the spec's attention (defaults when it has none)."""
    head_dim = spec.head_dim or min(128, spec.hidden_size)
    heads = spec.num_attention_heads or max(1, spec.hidden_size // head_dim)
    kv_heads = spec.num_kv_heads or heads
    if heads % kv_heads:
        kv_heads = heads
    return heads, kv_heads, head_dim


class ExpertFFN(nn.Module):
    """One routed expert of ``spec`` (weights ``[out, in]``, no bias)."""

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        h, i = spec.hidden_size, spec.expert_intermediate_size
        kw = {"dtype": dtype, "device": device}
        self.gated = spec.expert_matrices == 3
        self.w1 = nn.Parameter(torch.randn(i, h, **kw) * h**-0.5, requires_grad=False)  # [I, H]
        self.w2 = nn.Parameter(torch.randn(h, i, **kw) * i**-0.5, requires_grad=False)  # [H, I]
        self.w3 = (nn.Parameter(torch.randn(i, h, **kw) * h**-0.5, requires_grad=False)
                   if self.gated else None)  # [I, H]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        """The expert's output for tokens ``x``."""
        if self.w3 is not None:
            return F.linear(F.silu(F.linear(x, self.w1)) * F.linear(x, self.w3), self.w2)
        return F.linear(F.gelu(F.linear(x, self.w1)), self.w2)


class Router(nn.Module):
    """Router logits, softmax and top-k of one MoE layer."""

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.top_k = spec.top_k
        self.weight = nn.Parameter(torch.randn(spec.num_experts, spec.hidden_size, dtype=dtype,
                                               device=device) * spec.hidden_size**-0.5,
                                   requires_grad=False)  # [E, H]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gate weights [T, k], expert ids [T, k])``."""
        probs = torch.softmax(F.linear(x, self.weight).float(), dim=-1)  # [T, E]
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        return weights / weights.sum(-1, keepdim=True), ids


class NonExpertLayer(nn.Module):
    """One layer's non-expert decode work for ``batch`` requests at ``context`` cached tokens."""

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        h = spec.hidden_size
        self.heads, self.kv_heads, self.head_dim = attention_shape(spec)
        kw = {"dtype": dtype, "device": device}
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.qkv = nn.Parameter(torch.randn(q_out + 2 * kv_out, h, **kw) * h**-0.5,
                                requires_grad=False)  # [Q + 2 KV, H]
        self.o = nn.Parameter(torch.randn(h, q_out, **kw) * q_out**-0.5,
                              requires_grad=False)  # [H, Q]
        self.norm1 = nn.RMSNorm(h, **kw)
        self.norm2 = nn.RMSNorm(h, **kw)
        self.router = Router(spec, dtype, device)
        self.dtype, self.device = dtype, device
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def allocate(self, batch: int, context: int) -> None:
        """A KV cache of ``context`` positions (plus the new one) for ``batch`` requests."""
        shape = (batch, self.kv_heads, context + 1, self.head_dim)  # [B, KV, C + 1, D]
        self.k_cache = torch.randn(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.randn(shape, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` [B, H], one decode token per request -> (hidden [B, H], gates, expert ids)."""
        assert self.k_cache is not None and self.v_cache is not None, "call allocate() first"
        b = x.shape[0]
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        qkv = F.linear(self.norm1(x), self.qkv)  # [B, Q + 2 KV]
        q = qkv[:, :q_out].view(b, self.heads, 1, self.head_dim)  # [B, Hq, 1, D]
        k = qkv[:, q_out:q_out + kv_out].view(b, self.kv_heads, self.head_dim)
        v = qkv[:, q_out + kv_out:].view(b, self.kv_heads, self.head_dim)
        self.k_cache[:b, :, -1] = k
        self.v_cache[:b, :, -1] = v
        attn = F.scaled_dot_product_attention(q, self.k_cache[:b], self.v_cache[:b],
                                              enable_gqa=self.heads != self.kv_heads)
        x = x + F.linear(attn.reshape(b, q_out), self.o)  # [B, H]
        gates, ids = self.router(self.norm2(x))
        return x, gates, ids
