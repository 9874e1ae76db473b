"""A live model's MoE structure: its routers and its experts modules, found generically.

Routers come from :func:`traces.record.adapters.find_routers` (transformers' own router
declaration, the per-architecture table as a fallback). The routed experts are the modules that
transformers 5.x builds with ``@use_experts_implementation`` (``transformers.integrations.moe``):
every MoE block of the supported models holds one, whose forward transformers dispatches by
``config._experts_implementation`` to a function ``(module, hidden_states [T, H],
top_k_index [T, k], top_k_weights [T, k]) -> [T, H]``. Live mode registers its own function there
(:mod:`hw.live.interface`), so the model's own MoE block code (router, shared experts, how the
shared term is added, GPT-OSS's router scores) runs unchanged and only the routed experts go
through the offloading executor.

The decorator also describes each experts module's weights, which :class:`ExpertLayout` reads:
``gate_up_proj`` (``has_gate``; ``up_proj`` otherwise) ``[E, 2I, H]`` or, ``is_transposed``,
``[E, H, 2I]`` (GPT-OSS, gate and up interleaved: ``is_concatenated`` false), optional
``*_bias`` (``has_bias``), ``down_proj`` ``[E, H, I]`` or ``[E, I, H]``; the activation is the
module's own ``_apply_gate`` (or ``act_fn`` without a gate), and ``post_expert_norm`` when
``has_post_expert_norm``. One expert's host buffer is its slices of these parameters, flattened
and concatenated in that order.

Architectures whose experts do not use the interface (custom code, or quantized experts replaced
by another module class) are refused with one ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.record.adapters import RouterSet, find_routers


@dataclass(frozen=True)
class ExpertLayout:
    """Where one expert's weights sit in its host buffer: ``parts`` are ``(parameter name,
    shape of one expert's slice)`` in buffer order, plus the interface flags."""

    parts: tuple[tuple[str, tuple[int, ...]], ...]
    has_gate: bool
    has_bias: bool
    is_transposed: bool
    has_post_expert_norm: bool

    @property
    def numel(self) -> int:
        """Elements of one expert's buffer."""
        return sum(int(torch.Size(shape).numel()) for _, shape in self.parts)


def expert_layout(module: Any) -> ExpertLayout:
    """The buffer layout of an ``@use_experts_implementation`` experts module."""
    has_gate, has_bias = bool(module.has_gate), bool(module.has_bias)
    names = ["gate_up_proj" if has_gate else "up_proj"]
    names += [f"{names[0]}_bias"] if has_bias else []
    names += ["down_proj"] + (["down_proj_bias"] if has_bias else [])
    parts = []
    for name in names:
        param = getattr(module, name, None)
        if not isinstance(param, torch.Tensor) or param.dim() < 2:
            raise ConfigError(f"{type(module).__name__} has no per-expert parameter {name!r}; "
                              f"live mode needs transformers' fused experts layout")
        parts.append((name, tuple(param.shape[1:])))
    return ExpertLayout(tuple(parts), has_gate, has_bias, bool(module.is_transposed),
                        bool(getattr(module, "has_post_expert_norm", False)))


def uses_experts_interface(module: Any) -> bool:
    """Whether ``module`` was built by transformers' ``@use_experts_implementation``."""
    wrapped = getattr(type(module).forward, "__wrapped__", None)
    return wrapped is not None and all(hasattr(module, a) for a in
                                       ("has_gate", "has_bias", "is_transposed"))


@dataclass
class LiveArch:
    """One loaded model's MoE structure: routers, experts modules (one per MoE layer, in block
    order), their common weight layout, and the model type."""

    routers: RouterSet
    experts: list[Any]
    layout: ExpertLayout
    model_type: str

    @property
    def blocks(self) -> list[int]:
        """Decoder block numbers of the MoE blocks."""
        return self.routers.blocks


def inspect_model(model: Any) -> LiveArch:
    """The :class:`LiveArch` of ``model``; ConfigError when its experts cannot be offloaded."""
    routers = find_routers(model)
    experts = []
    for layer in range(len(routers.blocks)):
        block = model.get_submodule(routers.block_path(layer))
        found = [m for m in block.children() if uses_experts_interface(m)]
        if len(found) != 1:
            raise ConfigError(f"{type(model).__name__}: the MoE block {routers.block_path(layer)} "
                              f"has no experts module using transformers' experts interface "
                              f"(@use_experts_implementation), which live mode drives; "
                              f"quantized or custom experts cannot be offloaded")
        experts.append(found[0])
    if not type(model)._can_set_experts_implementation():
        raise ConfigError(f"{type(model).__name__} cannot switch its experts implementation")
    layouts = {expert_layout(m) for m in experts}
    if len(layouts) != 1:
        raise ConfigError(f"{type(model).__name__}: MoE layers with different expert shapes "
                          f"cannot share one expert store")
    return LiveArch(routers, experts, layouts.pop(), str(model.config.model_type))


def expert_rows(arch: LiveArch, module: Any) -> torch.Tensor:
    """One MoE layer's routed experts as ``[E, P]`` host rows in the layout's order."""
    with torch.no_grad():
        parts = []
        for name, _ in arch.layout.parts:
            param = getattr(module, name).detach()  # [E, ...]
            parts.append(param.reshape(param.shape[0], -1).to("cpu"))
        return torch.cat(parts, dim=1)  # [E, P]
