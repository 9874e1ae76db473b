"""Compute timings: one expert against tokens, non-expert layer against batch and context, the
router against tokens, and (to build a profile without a base) peak matmul and memory figures."""

from __future__ import annotations

import torch
from moe_offload_lab.hw.calibrate.devices import median_s
from moe_offload_lab.hw.calibrate.layers import ExpertFFN, NonExpertLayer, Router
from moe_offload_lab.traces.spec import ModelSpec


def _per_token_count(module: torch.nn.Module, spec: ModelSpec, tokens: list[int],
                     device: torch.device, dtype: torch.dtype, repeats: int,
                     warmup: int) -> list[float]:
    """Median seconds of ``module`` on random [T, H] inputs, one per token count T."""
    out = []
    for n in tokens:
        x = torch.randn(n, spec.hidden_size, dtype=dtype, device=device)  # [T, H]
        out.append(median_s(lambda x=x: module(x), device, repeats, warmup))
    return out


@torch.no_grad()
def expert_seconds(spec: ModelSpec, tokens: list[int], device: torch.device, dtype: torch.dtype,
                   repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of one routed expert's FFN over each token count."""
    return _per_token_count(ExpertFFN(spec, dtype, device), spec, tokens, device, dtype,
                            repeats, warmup)


@torch.no_grad()
def non_expert_seconds(spec: ModelSpec, batches: list[int], contexts: list[int],
                       device: torch.device, dtype: torch.dtype, repeats: int,
                       warmup: int = 1) -> list[list[float]]:
    """Median seconds of :class:`NonExpertLayer` per ``[batch][context]``."""
    layer = NonExpertLayer(spec, dtype, device)
    table = []
    for b in batches:
        row = []
        for c in contexts:
            layer.allocate(b, c)
            x = torch.randn(b, spec.hidden_size, dtype=dtype, device=device)  # [B, H]
            row.append(median_s(lambda x=x: layer(x), device, repeats, warmup))
        table.append(row)
    layer.k_cache = layer.v_cache = None
    return table


@torch.no_grad()
def router_seconds(spec: ModelSpec, tokens: list[int], device: torch.device, dtype: torch.dtype,
                   repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of the router (logits, softmax, top-k) over each token count."""
    return _per_token_count(Router(spec, dtype, device), spec, tokens, device, dtype,
                            repeats, warmup)


@torch.no_grad()
def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """Achieved dense matmul TFLOP/s on square ``size`` matrices."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    seconds = median_s(lambda: a @ b, device, repeats, 1)
    return 2 * size**3 / seconds / 1e12


@torch.no_grad()
def memory_gb_per_s(device: torch.device, num_bytes: int, repeats: int) -> float:
    """Achieved device memory bandwidth (read + write of a device-to-device copy), GB/s."""
    src = torch.ones(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_s(lambda: dst.copy_(src), device, repeats, 1)
    return 2 * num_bytes / seconds / 1e9
