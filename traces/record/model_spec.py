"""Build a :class:`~traces.spec.ModelSpec` from a Hugging Face MoE model and its config."""

from __future__ import annotations

import re
from typing import Any

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.record.adapters import ArchAdapter
from moe_offload_lab.traces.spec import ModelSpec

_EXPERT_PARAM = re.compile(r"\.experts\.")
_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "float64": 8.0,
          "float8_e4m3fn": 1.0, "float8_e5m2": 1.0}
_EXTRA_KEYS = ("topk_method", "n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor",
               "sliding_window", "decoder_sparse_step", "mlp_only_layers", "router_jitter_noise")


def layer_pattern(num_layers: int, moe_blocks: list[int]) -> tuple[int, int]:
    """``(first_k_dense, moe_layer_step)`` whose ModelSpec lists exactly ``moe_blocks``.

    ModelSpec describes the MoE blocks as a dense prefix followed by every ``step``-th block;
    other patterns (an arbitrary Qwen2-MoE ``mlp_only_layers``) raise ConfigError.
    """
    wanted = tuple(moe_blocks)
    for step in range(1, num_layers + 1):
        for first in range(num_layers):
            start = first + step - 1
            if start != wanted[0]:
                continue
            if tuple(range(start, num_layers, step)) == wanted:
                return first, step
    raise ConfigError(f"MoE blocks {list(wanted)} of {num_layers} do not follow a "
                      f"dense-prefix-plus-step pattern that a ModelSpec can describe")


def _dtype_name(config: Any, model: Any) -> str:
    dtype = getattr(config, "dtype", None)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    return str(dtype).removeprefix("torch.")


def spec_from_model(model: Any, adapter: ArchAdapter, moe_blocks: list[int], routers: list[Any],
                    name: str) -> ModelSpec:
    """The ModelSpec of ``model``: counts from its routers and config, byte sizes from its
    parameters at the checkpoint's dtype (``config.dtype``, else the loaded one)."""
    config = model.config
    n_layers = config.num_hidden_layers
    first, step = layer_pattern(n_layers, moe_blocks)
    num_experts, top_k = int(routers[0].num_experts), int(routers[0].top_k)
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, adapter.expert_intermediate_key))
    dtype = _dtype_name(config, model)
    bytes_per_param = _BYTES.get(dtype, 2.0)
    non_expert = sum(p.numel() for n, p in model.named_parameters() if not _EXPERT_PARAM.search(n))

    shared, shared_size = 0, 0
    if adapter.model_type == "qwen2_moe" and getattr(config, "shared_expert_intermediate_size", 0):
        shared, shared_size = 1, int(config.shared_expert_intermediate_size)
    elif adapter.model_type.startswith("deepseek"):
        shared = int(getattr(config, "n_shared_experts", 0) or 0)
        shared_size = intermediate if shared else 0
    dense_size = int(config.intermediate_size) if len(moe_blocks) < n_layers else 0

    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    attention = adapter.attention
    if attention != "mla":
        attention = "mha" if kv_heads == heads else "gqa"
    extra = {"model_type": adapter.model_type, "checkpoint_dtype": dtype}
    for key in _EXTRA_KEYS:
        value = getattr(config, key, None)
        if value is not None and value != []:
            extra[key] = value
    return ModelSpec(
        name=name, num_layers=n_layers, num_experts=num_experts, top_k=top_k,
        hidden_size=hidden, expert_intermediate_size=intermediate, first_k_dense=first,
        moe_layer_step=step, num_shared_experts=shared, shared_intermediate_size=shared_size,
        dense_intermediate_size=dense_size, expert_matrices=3, expert_bias=adapter.expert_bias,
        expert_bytes_per_param=bytes_per_param, non_expert_bytes=int(non_expert * bytes_per_param),
        attention=attention, num_attention_heads=heads, num_kv_heads=kv_heads,
        head_dim=int(head_dim), vocab_size=int(config.vocab_size),
        hf_architecture=type(model).__name__, notes=adapter.notes, extra=extra,
    )
