"""Where each supported Hugging Face MoE architecture keeps its routers (transformers 5.x).

In transformers 5.x every supported router is a module of its own whose forward returns
``(router_logits, top_k_weights, top_k_indices)`` for the flattened tokens of the batch
(``[batch * seq, E]``, ``[batch * seq, k]``, ``[batch * seq, k]``), and the MoE block hands exactly
those weights and indices to its experts. A forward hook on the router therefore sees the experts
each token really used, including DeepSeek-V3's correction bias and group limit, DeepSeek-V2's
group-limited greedy choice and Phi-3.5-MoE's sparsemixer; the recorder never recomputes a top-k
from logits.

==================  ===============================  ==========================================
architecture        router module (in block ``i``)    MoE blocks
==================  ===============================  ==========================================
Mixtral             ``layers[i].mlp.gate``            all
Qwen2-MoE           ``layers[i].mlp.gate``            ``(i + 1) % decoder_sparse_step == 0`` and
                                                      ``i`` not in ``mlp_only_layers``
Qwen3-MoE           ``layers[i].mlp.gate``            as Qwen2-MoE
OLMoE               ``layers[i].mlp.gate``            all
DeepSeek-V2 / V3    ``layers[i].mlp.gate``            ``i >= first_k_dense_replace``
GPT-OSS             ``layers[i].mlp.router``          all
Phi-3.5-MoE         ``layers[i].mlp.router``          all
GraniteMoe          ``layers[i].block_sparse_moe.router``  all
==================  ===============================  ==========================================

The MoE blocks are found structurally (a dense block has no router module at that path) and
checked against the rule in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moe_offload_lab.traces.errors import ConfigError


def _every_layer(config: Any) -> list[int]:
    return list(range(config.num_hidden_layers))


def _qwen_layers(config: Any) -> list[int]:
    step = getattr(config, "decoder_sparse_step", 1) or 1
    skip = set(getattr(config, "mlp_only_layers", None) or ())
    return [i for i in range(config.num_hidden_layers) if (i + 1) % step == 0 and i not in skip]


def _deepseek_layers(config: Any) -> list[int]:
    return list(range(config.first_k_dense_replace, config.num_hidden_layers))


@dataclass(frozen=True)
class ArchAdapter:
    """How to find and read the routers of one Hugging Face MoE architecture.

    ``block_attr`` and ``router_attr`` name the path ``layers[i].<block_attr>.<router_attr>``;
    ``moe_layers(config)`` is the config's own rule for which blocks are MoE;
    ``expert_intermediate_key`` is the config key of one routed expert's intermediate width.
    """

    model_type: str
    block_attr: str
    router_attr: str
    moe_layers: Callable[[Any], list[int]]
    expert_intermediate_key: str
    attention: str = "gqa"
    expert_bias: bool = False
    notes: str = ""

    def router_of(self, layer: Any) -> Any | None:
        """The router module of one decoder block, or None when the block is dense."""
        block = getattr(layer, self.block_attr, None)
        router = getattr(block, self.router_attr, None) if block is not None else None
        if router is None or not hasattr(router, "top_k") or not hasattr(router, "num_experts"):
            return None
        return router

    @staticmethod
    def read_output(output: Any) -> tuple[Any, Any]:
        """``(weights [tokens, k], indices [tokens, k])`` from a router's forward output."""
        if not isinstance(output, tuple) or len(output) != 3:
            raise ConfigError("router output is not (logits, weights, indices); this recorder "
                              "needs transformers 5.x")
        _, weights, indices = output
        return weights, indices


ADAPTERS: dict[str, ArchAdapter] = {
    a.model_type: a
    for a in (
        ArchAdapter("mixtral", "mlp", "gate", _every_layer, "intermediate_size",
                    notes="softmax over all experts, top-k renormalised"),
        ArchAdapter("qwen2_moe", "mlp", "gate", _qwen_layers, "moe_intermediate_size",
                    notes="one gated shared expert per MoE block; sparse step / mlp_only_layers"),
        ArchAdapter("qwen3_moe", "mlp", "gate", _qwen_layers, "moe_intermediate_size",
                    notes="no shared expert"),
        ArchAdapter("olmoe", "mlp", "gate", _every_layer, "intermediate_size"),
        ArchAdapter("deepseek_v2", "mlp", "gate", _deepseek_layers, "moe_intermediate_size",
                    attention="mla", notes="greedy or group-limited greedy top-k; "
                    "gates scaled by routed_scaling_factor, unnormalised"),
        ArchAdapter("deepseek_v3", "mlp", "gate", _deepseek_layers, "moe_intermediate_size",
                    attention="mla", notes="sigmoid scores plus e_score_correction_bias, "
                    "group limit (n_group, topk_group); gates scaled by routed_scaling_factor"),
        ArchAdapter("gpt_oss", "mlp", "router", _every_layer, "intermediate_size",
                    expert_bias=True, notes="router with bias; softmax over the top-k logits"),
        ArchAdapter("phimoe", "mlp", "router", _every_layer, "intermediate_size",
                    notes="sparsemixer routing (deterministic in eval mode)"),
        ArchAdapter("granitemoe", "block_sparse_moe", "router", _every_layer,
                    "intermediate_size", notes="softmax over the top-k logits"),
    )
}


def adapter_for(config: Any) -> ArchAdapter:
    """The adapter of a transformers config; ConfigError for an architecture without one."""
    model_type = getattr(config, "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    raise ConfigError(f"model type {model_type!r} is not a supported MoE architecture "
                      f"(supported: {', '.join(sorted(ADAPTERS))})")


def decoder_layers(model: Any) -> Any:
    """The decoder blocks (``model.model.layers``) of a causal LM."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no decoder layers at model.layers")
    return layers


def find_routers(model: Any) -> tuple[ArchAdapter, list[int], list[Any]]:
    """``(adapter, block numbers of the MoE blocks, their router modules)`` of a model.

    The MoE blocks are those with a router module at the adapter's path; they must match the
    config's rule, and there must be at least one.
    """
    adapter = adapter_for(model.config)
    blocks, routers = [], []
    for i, layer in enumerate(decoder_layers(model)):
        router = adapter.router_of(layer)
        if router is not None:
            blocks.append(i)
            routers.append(router)
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no MoE block (no router at "
                          f"layers[i].{adapter.block_attr}.{adapter.router_attr})")
    expected = adapter.moe_layers(model.config)
    if blocks != expected:
        raise ConfigError(f"{type(model).__name__}: routers found in blocks {blocks}, but the "
                          f"config says the MoE blocks are {expected}")
    return adapter, blocks, routers
