"""Per-architecture knowledge of live mode: MoE blocks, routed expert weights, shared experts.

Routers and MoE-block discovery come from :mod:`traces.record.adapters` (the same structural search
the recorder uses). Here each architecture adds how its routed experts are stored and computed
(transformers 5.x, fused):

- SwiGLU family (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3): ``experts.gate_up_proj``
  ``[E, 2I, H]`` (gate rows first) and ``experts.down_proj`` ``[E, H, I]``; expert ``e``'s buffer
  is ``gate_up_proj[e]`` then ``down_proj[e]`` flattened, i.e. exactly the store's ``gate [I, H]``,
  ``up [I, H]``, ``down [H, I]`` layout; activation ``experts.act_fn``.
- GPT-OSS: ``gate_up_proj`` ``[E, H, 2I]`` (transposed, gate/up interleaved in the columns),
  ``gate_up_proj_bias`` ``[E, 2I]``, ``down_proj`` ``[E, I, H]``, ``down_proj_bias`` ``[E, H]``;
  the buffer keeps that layout (``[H*2I | 2I | I*H | H]``) and the expert function is GPT-OSS's
  clamped SwiGLU (``alpha``, ``limit``, ``(up + 1) * glu``).

Shared experts stay resident: Qwen2-MoE's ``shared_expert`` scaled by
``sigmoid(shared_expert_gate(x))``, DeepSeek's ``shared_experts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.record.adapters import ArchAdapter, find_routers

SWIGLU_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
GPT_OSS = "gpt_oss"
SUPPORTED = (*SWIGLU_TYPES, GPT_OSS)


@dataclass
class LiveArch:
    """One loaded model's MoE structure: its adapter, MoE block numbers, blocks and routers."""

    adapter: ArchAdapter
    blocks: list[int]  # decoder block numbers of the MoE blocks
    modules: list[Any]  # the original MoE block modules (``layers[b].<block_attr>``)
    routers: list[Any]  # their router modules

    @property
    def model_type(self) -> str:
        return self.adapter.model_type

    @property
    def expert_kind(self) -> str:
        """``swiglu`` (fused gate/up, act_fn) or ``gpt_oss`` (clamped SwiGLU with biases)."""
        return GPT_OSS if self.model_type == GPT_OSS else "swiglu"


def inspect_model(model: Any) -> LiveArch:
    """The :class:`LiveArch` of ``model``; ConfigError for an architecture live mode lacks."""
    adapter, blocks, routers = find_routers(model)
    if adapter.model_type not in SUPPORTED:
        raise ConfigError(f"live mode does not support model type {adapter.model_type!r} yet "
                          f"(supported: {', '.join(SUPPORTED)})")
    layers = model.model.layers
    modules = [getattr(layers[b], adapter.block_attr) for b in blocks]
    for b, module in zip(blocks, modules, strict=True):
        if not hasattr(getattr(module, "experts", None), "gate_up_proj"):
            raise ConfigError(f"block {b} of {type(model).__name__} has no fused "
                              f"experts.gate_up_proj (transformers 5.x layout expected)")
    return LiveArch(adapter, blocks, modules, routers)


def expert_rows(arch: LiveArch, module: Any) -> torch.Tensor:
    """One MoE block's routed experts as ``[E, P]`` rows in the store layout (see module doc)."""
    experts = module.experts
    with torch.no_grad():
        gate_up = experts.gate_up_proj.detach()  # swiglu [E, 2I, H]; gpt-oss [E, H, 2I]
        down = experts.down_proj.detach()  # swiglu [E, H, I]; gpt-oss [E, I, H]
        n_exp = gate_up.shape[0]
        parts = [gate_up.reshape(n_exp, -1)]
        if arch.expert_kind == GPT_OSS:
            parts.append(experts.gate_up_proj_bias.detach().reshape(n_exp, -1))  # [E, 2I]
            parts.append(down.reshape(n_exp, -1))  # [E, I*H]
            parts.append(experts.down_proj_bias.detach().reshape(n_exp, -1))  # [E, H]
        else:
            parts.append(down.reshape(n_exp, -1))  # [E, H*I]
        return torch.cat([p.to("cpu") for p in parts], dim=1)  # [E, P]


def shared_output(arch: LiveArch, module: Any, hidden_states: torch.Tensor,
                  flat: torch.Tensor) -> torch.Tensor | None:
    """The resident shared-expert term the original block adds to the routed output, or None.

    ``hidden_states`` is the block input ``[B, S, H]`` and ``flat`` its ``[B*S, H]`` view; each
    architecture's shared path sees the same tensor as in its original forward.
    """
    if arch.model_type == "qwen2_moe":
        out = module.shared_expert(flat)  # [T, H]
        return torch.nn.functional.sigmoid(module.shared_expert_gate(flat)) * out
    if arch.model_type in ("deepseek_v2", "deepseek_v3"):
        return module.shared_experts(hidden_states)  # [B, S, H]
    return None
