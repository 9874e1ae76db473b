"""A ModelSpec from a Hugging Face ``config.json``, for MoE models outside the bundled catalog.

``--model`` (``moe-trace import``, ``moe-hw run``) and :func:`load_model_spec` accept a catalog
name (``mixtral-8x7b``), a ModelSpec YAML file, or a Hugging Face ``config.json`` (the file, or the
checkpoint folder holding it). The JSON is read as plain JSON: no torch, no transformers, no
network. Architectures name the same quantities differently; the readers below try each spelling:

===========================  =================================================================
quantity                     config keys (first one present wins)
===========================  =================================================================
routed experts               ``num_local_experts`` (Mixtral, Phi-MoE, GPT-OSS, Granite, Jamba,
                             Llama-4), ``num_experts`` (Qwen-MoE, OLMoE, Switch),
                             ``n_routed_experts`` (DeepSeek, GLM-4-MoE), ``moe_num_experts``
                             (Ernie-4.5), ``ffn_config.moe_num_experts`` (DBRX)
experts per token            ``num_experts_per_tok``, ``num_experts_per_token``,
                             ``experts_per_token``, ``moe_k``, ``moe_topk``, ``moe_top_k``,
                             ``ffn_config.moe_top_k``; Switch routes top-1, NLLB-MoE top-2
expert width                 ``moe_intermediate_size``, else ``intermediate_size``
                             (``d_ff`` for Switch, ``ffn_config.ffn_hidden_size`` for DBRX)
which blocks are MoE         DeepSeek ``first_k_dense_replace`` + ``moe_layer_freq``; Qwen
                             ``decoder_sparse_step`` + ``mlp_only_layers``; Llama-4
                             ``moe_layers`` / ``interleave_moe_layer_step``; Jamba
                             ``expert_layer_period`` + ``expert_layer_offset``; Ernie
                             ``moe_layer_start_index``/``end_index``/``interval``; Switch
                             ``encoder_sparse_step``/``decoder_sparse_step``; else every block
shared experts               DeepSeek ``n_shared_experts`` (width ``moe_intermediate_size``),
                             Qwen2-MoE ``shared_expert_intermediate_size`` (one gated expert),
                             Ernie ``moe_num_shared_experts``, Llama-4 (one, ``intermediate_size``)
===========================  =================================================================

Multimodal configs whose language model sits under ``text_config`` are read from there.

Bytes: routed experts are counted at the checkpoint's storage (``quantization_config``: FP8 with
its block scales, MXFP4 at 4.25 bits, GPTQ/AWQ/compressed-tensors at ``bits`` plus one fp16
scale and packed zero per group, bitsandbytes 4-bit NF4 at 4.5 bits, 8-bit at 8.25 bits),
otherwise at ``torch_dtype``; an unknown quantization method keeps the dtype's size and says so in
``notes``. ``non_expert_bytes`` (everything resident: embeddings, attention, norms, routers, shared
experts, dense MLP blocks) is estimated from the shapes at ``torch_dtype`` (within 1% of the
catalog's measured figures for the models it holds, see ``tests/traces/test_hf_config.py``).

A config with no routed experts (a dense model) raises one ConfigError naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec

_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts",
                "ffn_config.moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "experts_per_token", "moe_k",
               "moe_topk", "moe_top_k", "ffn_config.moe_top_k")
_FIXED_TOP_K = {"switch_transformers": 1, "nllb_moe": 2}  # hard-wired in their routers
_TWO_MATRIX_TYPES = ("switch_transformers", "nllb_moe")  # ReLU FFN experts (wi, wo)
_BIAS_TYPES = ("gpt_oss",)
_DTYPE_BYTES = {"float32": 4.0, "float": 4.0, "float16": 2.0, "half": 2.0, "bfloat16": 2.0,
                "float64": 8.0, "float8_e4m3fn": 1.0, "float8_e5m2": 1.0}
_EXTRA_KEYS = ("topk_method", "n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor",
               "scoring_func", "sliding_window", "decoder_sparse_step", "mlp_only_layers",
               "moe_layer_freq", "router_jitter_noise")


# ---- reading -------------------------------------------------------------------------------------
def is_hf_config_path(model: str | Path) -> bool:
    """Whether ``model`` names a Hugging Face config: a ``.json`` file, or a folder holding a
    ``config.json``."""
    path = Path(model)
    return str(model).endswith(".json") or (path.is_dir() and (path / "config.json").is_file())


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """The JSON object of a ``config.json`` (or of the one inside a checkpoint folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (expected a Hugging Face config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return data


def load_model_spec(model: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec from a ModelSpec, a catalog name, a ModelSpec YAML or a Hugging Face
    ``config.json`` (file or checkpoint folder)."""
    if isinstance(model, ModelSpec):
        return model
    if is_hf_config_path(model):
        return spec_from_hf_config_file(model)
    from moe_offload_lab.traces.catalog import load_named_or_path

    data, _ = load_named_or_path("model", model)
    return ModelSpec.from_dict(data)


def spec_from_hf_config_file(path: str | Path, name: str | None = None) -> ModelSpec:
    """The ModelSpec of a ``config.json``; the name defaults to the folder holding it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    default = folder.resolve().name if path.is_dir() or path.name == "config.json" else path.stem
    return spec_from_hf_config(read_hf_config(path), name or default, where=str(path))


# ---- the mapping ---------------------------------------------------------------------------------
class _Config:
    """Typed lookups in a config mapping (dotted keys reach into sub-objects)."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def raw(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def first(self, keys: tuple[str, ...]) -> tuple[str | None, Any]:
        for key in keys:
            value = self.raw(key)
            if value is not None:
                return key, value
        return None, None

    def int(self, key: str, default: int | None = None) -> int | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, list) and value and all(v == value[0] for v in value):
            value = value[0]  # e.g. Ernie's per-modality lists with one value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{self.where}: {key} must be a non-negative integer, got "
                              f"{value!r}"[:200])
        return value

    def need_int(self, keys: tuple[str, ...], what: str) -> int:
        key, _ = self.first(keys)
        if key is None:
            raise ConfigError(f"{self.where}: no {what} (looked for {', '.join(keys)})")
        value = self.int(key)
        if not value:
            raise ConfigError(f"{self.where}: {key} must be a positive integer")
        return value


def _language_model(data: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a (possibly multimodal) config."""
    if not any(k in data for k in _EXPERT_KEYS) and isinstance(data.get("text_config"), dict):
        inner = dict(data["text_config"])
        for key in ("torch_dtype", "dtype", "quantization_config", "architectures"):
            inner.setdefault(key, data.get(key))
        return inner
    return data


def moe_blocks(cfg: _Config, model_type: str, num_layers: int) -> list[int]:
    """Block numbers (0-based) of the MoE blocks, by the architecture's own rule."""
    if cfg.raw("first_k_dense_replace") is not None:  # DeepSeek, GLM-4-MoE, Dots
        first, freq = cfg.int("first_k_dense_replace"), cfg.int("moe_layer_freq", 1) or 1
        return [i for i in range(first, num_layers) if i % freq == 0]
    if cfg.raw("decoder_sparse_step") is not None or cfg.raw("mlp_only_layers") is not None:
        step = cfg.int("decoder_sparse_step", 1) or 1
        skip = set(cfg.raw("mlp_only_layers") or ())
        return [i for i in range(num_layers) if (i + 1) % step == 0 and i not in skip]
    if isinstance(cfg.raw("moe_layers"), list):  # Llama-4
        return sorted(int(i) for i in cfg.raw("moe_layers"))
    if cfg.raw("interleave_moe_layer_step") is not None:
        step = cfg.int("interleave_moe_layer_step") or 1
        return list(range(step - 1, num_layers, step))
    if cfg.raw("expert_layer_period") is not None:  # Jamba
        period = cfg.int("expert_layer_period") or 1
        offset = cfg.int("expert_layer_offset", 0)
        return [i for i in range(num_layers) if i % period == offset]
    if cfg.raw("moe_layer_interval") is not None:  # Ernie-4.5
        interval = cfg.int("moe_layer_interval") or 1
        start = cfg.int("moe_layer_start_index", 0)
        end = cfg.int("moe_layer_end_index", num_layers - 1)
        end = num_layers - 1 if end is None or end < 0 else end
        return [i for i in range(num_layers) if (i + 1) % interval == 0 and start <= i <= end]
    if model_type in _TWO_MATRIX_TYPES:  # encoder blocks then decoder blocks
        encoder = cfg.int("num_layers", 0) or 0
        blocks = []
        for offset, count, key in ((0, encoder, "encoder_sparse_step"),
                                   (encoder, num_layers - encoder, "decoder_sparse_step")):
            step = cfg.int(key, 1) or 0
            blocks += [offset + i for i in range(count)
                       if step and (step == 1 or i % step == 1)]
        return blocks
    return list(range(num_layers))


def layer_pattern(num_layers: int, moe_blocks: list[int]) -> tuple[int, int]:
    """``(first_k_dense, moe_layer_step)`` whose ModelSpec lists exactly ``moe_blocks``.

    ModelSpec describes the MoE blocks as a dense prefix followed by every ``step``-th block;
    other patterns (an arbitrary Qwen2-MoE ``mlp_only_layers``) raise ConfigError.
    """
    wanted = tuple(moe_blocks)
    if not wanted:
        raise ConfigError("no MoE block")
    for step in range(1, num_layers + 1):
        first = wanted[0] - step + 1
        if first >= 0 and tuple(range(wanted[0], num_layers, step)) == wanted:
            return first, step
    raise ConfigError(f"MoE blocks {list(wanted)} of {num_layers} do not follow a "
                      f"dense-prefix-plus-step pattern that a ModelSpec can describe")


def _num_layers(cfg: _Config, model_type: str) -> int:
    if model_type in _TWO_MATRIX_TYPES:  # encoder-decoder: both stacks hold blocks
        encoder = cfg.need_int(("num_layers",), "number of encoder layers")
        return encoder + (cfg.int("num_decoder_layers", encoder) or 0)
    return cfg.need_int(("num_hidden_layers", "n_layers", "num_layers"), "number of layers")


def _bytes_per_param(cfg: _Config, where: str) -> tuple[float, float, str]:
    """``(expert bytes per parameter, resident bytes per parameter, note)``."""
    dtype = str(cfg.raw("torch_dtype") or cfg.raw("dtype") or "bfloat16").removeprefix("torch.")
    if dtype not in _DTYPE_BYTES:
        raise ConfigError(f"{where}: unknown torch_dtype {dtype!r}")
    dense = _DTYPE_BYTES[dtype]
    quant = cfg.raw("quantization_config")
    if not isinstance(quant, dict):
        return dense, dense, f"experts at {dtype}"
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8":
        block = quant.get("weight_block_size") or []
        scale = 4.0 / math.prod(block) if len(block) == 2 else 0.0  # one fp32 scale per block
        return 1.0 + scale, dense, f"experts in FP8 (block {block or 'per tensor'})"
    if method == "mxfp4":
        return 4.25 / 8, dense, "experts in MXFP4 (4 bits + one 8-bit scale per 32)"
    bits, group = _bits_and_group(quant)
    if bits:
        per_group = (2.0 + bits / 8) / group if group > 0 else 0.0  # fp16 scale + packed zero
        return bits / 8 + per_group, dense, f"experts in {method or 'quantized'} {bits}-bit, " \
                                            f"group {group}"
    if method == "bitsandbytes" or quant.get("load_in_4bit") or quant.get("load_in_8bit"):
        if quant.get("load_in_8bit"):
            return 1.0 + 4.0 / 128, dense, "experts in bitsandbytes int8"
        return 0.5 + 4.0 / 64, dense, "experts in bitsandbytes NF4 (block 64)"
    return dense, dense, (f"quantization {method or '?'} not understood: experts counted at "
                          f"{dtype}")


def _bits_and_group(quant: dict[str, Any]) -> tuple[int, int]:
    """Weight bits and group size of GPTQ/AWQ-style and compressed-tensors configs (0 if none)."""
    bits = quant.get("bits") or quant.get("w_bit")
    group = quant.get("group_size") or quant.get("q_group_size") or 0
    if bits is None and isinstance(quant.get("config_groups"), dict):
        for scheme in quant["config_groups"].values():
            weights = scheme.get("weights") if isinstance(scheme, dict) else None
            if isinstance(weights, dict) and weights.get("num_bits"):
                bits, group = weights["num_bits"], weights.get("group_size") or 0
                break
    ok = isinstance(bits, int) and 0 < bits < 16
    return (bits, int(group) if isinstance(group, int) and group > 0 else 0) if ok else (0, 0)


def _attention(cfg: _Config, hidden: int) -> tuple[str, int, int, int, int]:
    """``(kind, heads, kv heads, head dim, parameters of one block's attention)``."""
    heads = cfg.int("num_attention_heads") or cfg.int("n_heads") or cfg.int("num_heads") or 0
    kv = cfg.int("num_key_value_heads") or cfg.int("attn_config.kv_n_heads") or heads
    if cfg.raw("kv_lora_rank") is not None:  # multi-head latent attention (DeepSeek)
        rope, nope = cfg.int("qk_rope_head_dim", 0), cfg.int("qk_nope_head_dim", 0)
        v_dim, kv_rank = cfg.int("v_head_dim", 0), cfg.int("kv_lora_rank")
        q_rank = cfg.int("q_lora_rank")
        q = (hidden * q_rank + q_rank + q_rank * heads * (nope + rope)) if q_rank \
            else hidden * heads * (nope + rope)
        kv_part = hidden * (kv_rank + rope) + kv_rank + kv_rank * heads * (nope + v_dim)
        return "mla", heads, heads, v_dim, q + kv_part + heads * v_dim * hidden
    head_dim = cfg.int("head_dim") or cfg.int("d_kv") or (hidden // heads if heads else 0)
    params = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim  # q, o; k, v
    return ("mha" if kv == heads else "gqa"), heads, kv, head_dim, params


def spec_from_hf_config(data: dict[str, Any], name: str, where: str = "config.json"
                        ) -> ModelSpec:
    """The ModelSpec of a Hugging Face MoE config (see the module docstring)."""
    data = _language_model(data)
    cfg = _Config(data, where)
    model_type = str(data.get("model_type") or "")
    key, experts = cfg.first(_EXPERT_KEYS)
    if key is None or cfg.int(key) in (None, 0, 1):
        raise ConfigError(f"{where}: not a Mixture-of-Experts config (model_type "
                          f"{model_type or '?'!r}: no routed-expert count among "
                          f"{', '.join(_EXPERT_KEYS)})")
    num_experts = cfg.int(key)
    top_k = _FIXED_TOP_K.get(model_type) or cfg.need_int(_TOP_K_KEYS, "experts per token")
    hidden = cfg.need_int(("hidden_size", "d_model"), "hidden size")
    num_layers = _num_layers(cfg, model_type)
    blocks = moe_blocks(cfg, model_type, num_layers)
    if not blocks:
        raise ConfigError(f"{where}: the config's layer rule leaves no MoE block")
    try:
        first, step = layer_pattern(num_layers, blocks)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    expert_key, _ = cfg.first(("moe_intermediate_size", "expert_intermediate_size",
                               "ffn_config.ffn_hidden_size", "d_ff", "intermediate_size"))
    if expert_key is None:
        raise ConfigError(f"{where}: no expert width (moe_intermediate_size or "
                          f"intermediate_size)")
    expert_width = cfg.int(expert_key)
    dense_width = 0
    if len(blocks) < num_layers:
        dense_width = cfg.int("intermediate_size_mlp") or cfg.int("intermediate_size") \
            or cfg.int("d_ff") or 0
    shared, shared_width = _shared_experts(cfg, model_type, expert_width)
    matrices = 2 if model_type in _TWO_MATRIX_TYPES else 3
    expert_bpp, dense_bpp, storage = _bytes_per_param(cfg, where)
    attention, heads, kv, head_dim, attn_params = _attention(cfg, hidden)
    vocab = cfg.int("vocab_size", 0) or 0
    encoder_decoder = model_type in _TWO_MATRIX_TYPES
    tied = bool(data.get("tie_word_embeddings", encoder_decoder))  # T5-style stacks tie
    cross = num_layers - (cfg.int("num_layers", 0) or 0) if encoder_decoder else 0
    resident = (vocab * hidden * (1 if tied else 2) + hidden  # embeddings, head, final norm
                + num_layers * (attn_params + 2 * hidden)  # attention and two norms per block
                + cross * attn_params  # decoder blocks' cross-attention
                + len(blocks) * (num_experts * hidden  # routers
                                 + shared * matrices * hidden * shared_width)
                + (num_layers - len(blocks)) * matrices * hidden * dense_width)
    extra: dict[str, Any] = {"model_type": model_type, "source": "hf-config",
                             "checkpoint_dtype": str(data.get("torch_dtype") or data.get("dtype")
                                                     or "bfloat16")}
    if isinstance(data.get("quantization_config"), dict):
        extra["quantization"] = str(data["quantization_config"].get("quant_method", "?"))
    for extra_key in _EXTRA_KEYS:
        value = data.get(extra_key)
        if value is not None and value != []:
            extra[extra_key] = value
    architectures = data.get("architectures") or []
    try:
        return ModelSpec(
            name=name, num_layers=num_layers, num_experts=num_experts, top_k=top_k,
            hidden_size=hidden, expert_intermediate_size=expert_width, first_k_dense=first,
            moe_layer_step=step, num_shared_experts=shared, shared_intermediate_size=shared_width,
            dense_intermediate_size=dense_width, expert_matrices=matrices,
            expert_bias=model_type in _BIAS_TYPES, expert_bytes_per_param=expert_bpp,
            non_expert_bytes=int(resident * dense_bpp), attention=attention,
            num_attention_heads=heads, num_kv_heads=kv, head_dim=head_dim, vocab_size=vocab,
            hf_architecture=str(architectures[0]) if architectures else "",
            notes=f"from a Hugging Face config.json; {storage}; non-expert bytes estimated "
                  f"from the shapes", extra=extra)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _shared_experts(cfg: _Config, model_type: str, expert_width: int) -> tuple[int, int]:
    """``(number of shared experts, width of each)``."""
    if cfg.int("n_shared_experts"):
        return cfg.int("n_shared_experts"), expert_width
    if cfg.int("shared_expert_intermediate_size"):
        return 1, cfg.int("shared_expert_intermediate_size")
    if cfg.int("moe_num_shared_experts"):
        return cfg.int("moe_num_shared_experts"), expert_width
    if model_type.startswith("llama4"):
        return 1, expert_width
    return 0, 0
