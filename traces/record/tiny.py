"""Tiny random configurations of every supported MoE architecture.

They build in milliseconds on the CPU, so tests, benchmarks and ``moe-trace record --config
tiny-mixtral`` can exercise the recorder without downloading a checkpoint. Each keeps what
makes its architecture's routing special: DeepSeek's dense first layer and group-limited top-k,
Qwen2-MoE's shared expert and sparse step, GPT-OSS's router bias and sliding-window layers,
Phi-3.5-MoE's sparsemixer; GLM-4-MoE and Ernie-4.5-MoE (dense first block, shared expert) are
found through transformers' router declaration alone. The vocabulary is 256, which the
byte-level tokenizer fallback covers exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError

_COMMON: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": None,
    "eos_token_id": None,
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-mixtral": {"model_type": "mixtral", "intermediate_size": 48, "num_local_experts": 8,
                     "num_experts_per_tok": 2},
    "tiny-qwen2-moe": {"model_type": "qwen2_moe", "intermediate_size": 64,
                       "moe_intermediate_size": 24, "shared_expert_intermediate_size": 40,
                       "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 2,
                       "norm_topk_prob": False},
    "tiny-qwen3-moe": {"model_type": "qwen3_moe", "intermediate_size": 64, "head_dim": 8,
                       "moe_intermediate_size": 24, "num_experts": 8, "num_experts_per_tok": 2,
                       "norm_topk_prob": True},
    "tiny-olmoe": {"model_type": "olmoe", "intermediate_size": 24, "num_experts": 8,
                   "num_experts_per_tok": 2, "num_key_value_heads": 4},
    "tiny-deepseek-v2": {"model_type": "deepseek_v2", "intermediate_size": 64,
                         "moe_intermediate_size": 24, "n_routed_experts": 8,
                         "num_experts_per_tok": 2, "n_shared_experts": 1,
                         "first_k_dense_replace": 1, "topk_method": "group_limited_greedy",
                         "n_group": 4, "topk_group": 2, "routed_scaling_factor": 1.0,
                         "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 4,
                         "qk_nope_head_dim": 4, "v_head_dim": 8, "head_dim": 4,
                         "num_key_value_heads": 4},
    "tiny-deepseek-v3": {"model_type": "deepseek_v3", "intermediate_size": 64,
                         "moe_intermediate_size": 24, "n_routed_experts": 8,
                         "num_experts_per_tok": 2, "n_shared_experts": 1,
                         "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2,
                         "routed_scaling_factor": 2.5, "norm_topk_prob": True,
                         "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 4,
                         "qk_nope_head_dim": 4, "v_head_dim": 8, "head_dim": 4,
                         "num_key_value_heads": 4},
    "tiny-gpt-oss": {"model_type": "gpt_oss", "intermediate_size": 24, "head_dim": 8,
                     "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": 8,
                     "layer_types": ["sliding_attention", "full_attention"] * 2,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
    "tiny-phimoe": {"model_type": "phimoe", "intermediate_size": 48, "num_local_experts": 8,
                    "num_experts_per_tok": 2},
    "tiny-granitemoe": {"model_type": "granitemoe", "intermediate_size": 24,
                        "num_local_experts": 8, "num_experts_per_tok": 2},
    # found only through transformers' router declaration (no fallback-table entry)
    "tiny-glm4-moe": {"model_type": "glm4_moe", "intermediate_size": 64,
                      "moe_intermediate_size": 24, "n_routed_experts": 8,
                      "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
                      "n_group": 1, "topk_group": 1, "head_dim": 8,
                      "routed_scaling_factor": 1.0},
    "tiny-ernie4_5-moe": {"model_type": "ernie4_5_moe", "intermediate_size": 64,
                          "moe_intermediate_size": 24, "moe_num_experts": 8, "moe_k": 2,
                          "moe_num_shared_experts": 1, "moe_layer_start_index": 1,
                          "moe_layer_interval": 1, "head_dim": 8},
}


def tiny_config_dict(name: str) -> dict[str, Any]:
    """The keyword arguments of the tiny config ``name`` (``tiny-mixtral`` ...), model_type
    included."""
    if name not in TINY_CONFIGS:
        raise ConfigError(f"unknown tiny config {name!r}; known: {', '.join(TINY_CONFIGS)}")
    return {**_COMMON, **TINY_CONFIGS[name]}


def config_from_spec(text: str) -> tuple[Any, str]:
    """A transformers config from a tiny config name, a JSON file or inline JSON.

    The JSON is an object of config keyword arguments with a ``model_type`` key (for example
    ``{"model_type": "mixtral", "hidden_size": 64, ...}``). Returns the config and a short name for
    the model (the tiny name, the file stem, or ``model_type`` for inline JSON).
    """
    from transformers import AutoConfig

    if text in TINY_CONFIGS:
        values, name = tiny_config_dict(text), text
    else:
        if text.lstrip().startswith("{"):
            raw, name = text, None
        else:
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"--config {text!r} is neither a tiny config name "
                                  f"({', '.join(TINY_CONFIGS)}), a JSON file nor inline JSON")
            try:
                raw = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read config {path.name}: {exc}") from None
            name = path.stem
        try:
            values = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        if not isinstance(values, dict) or not isinstance(values.get("model_type"), str):
            raise ConfigError("a JSON config must be an object with a \"model_type\" string")
        name = name or values["model_type"]
    values = dict(values)
    model_type = values.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **values)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"cannot build a {model_type!r} config: {str(exc).splitlines()[0]}") \
            from None
    return config, name


def build_model(config: Any, seed: int = 0) -> Any:
    """A randomly initialised causal LM for ``config`` (float32, eval mode), seeded."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"cannot build a model from the {config.model_type!r} config: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.float().eval()


def build_tiny_model(name: str, seed: int = 0) -> Any:
    """Build the tiny random model ``name`` (see :data:`TINY_CONFIGS`)."""
    config, _ = config_from_spec(name)
    return build_model(config, seed)
