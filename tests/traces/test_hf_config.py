"""ModelSpec from a Hugging Face config.json: the catalog models' own configs give the catalog's
shapes, other architectures' rules for MoE blocks are followed, a dense config is refused.

The config dicts below carry the fields of the models' published ``config.json`` files on the
Hugging Face Hub (mistralai/Mixtral-8x7B-v0.1, deepseek-ai/DeepSeek-V2-Lite, ...), trimmed to
the keys a shape depends on.
"""

from __future__ import annotations

import json

import pytest
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.hf_config import (
    load_model_spec,
    spec_from_hf_config,
    spec_from_hf_config_file,
)

MIXTRAL = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
           "intermediate_size": 14336, "num_attention_heads": 32, "num_experts_per_tok": 2,
           "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000}
CONFIGS = {
    "mixtral-8x7b": MIXTRAL,
    "mixtral-8x22b": {**MIXTRAL, "hidden_size": 6144, "intermediate_size": 16384,
                      "num_attention_heads": 48, "num_hidden_layers": 56, "vocab_size": 32768},
    "deepseek-v2-lite": {
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
        "first_k_dense_replace": 1, "hidden_size": 2048, "intermediate_size": 10944,
        "kv_lora_rank": 512, "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1,
        "n_routed_experts": 64, "n_shared_experts": 2, "num_attention_heads": 16,
        "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
        "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "topk_method": "greedy", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "v_head_dim": 128, "vocab_size": 102400},
    "qwen1.5-moe-a2.7b": {
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
        "decoder_sparse_step": 1, "hidden_size": 2048, "intermediate_size": 5632,
        "moe_intermediate_size": 1408, "num_attention_heads": 16, "num_experts": 60,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 16,
        "shared_expert_intermediate_size": 5632, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "vocab_size": 151936},
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "decoder_sparse_step": 1, "head_dim": 128, "hidden_size": 2048,
        "intermediate_size": 6144, "mlp_only_layers": [], "moe_intermediate_size": 768,
        "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 48, "num_key_value_heads": 4, "norm_topk_prob": True,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 151936},
    "olmoe-1b-7b": {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": 2048,
        "intermediate_size": 1024, "num_attention_heads": 16, "num_experts": 64,
        "num_experts_per_tok": 8, "num_hidden_layers": 16, "num_key_value_heads": 16,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 50304},
    "gpt-oss-20b": {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "head_dim": 64,
        "hidden_size": 2880, "intermediate_size": 2880, "experts_per_token": 4,
        "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
        "num_key_value_heads": 8, "num_local_experts": 32, "sliding_window": 128,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 201088,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn",
                                                           "model.layers.*.mlp.router",
                                                           "model.embed_tokens", "lm_head"],
                                "quant_method": "mxfp4"}},
    "phi-3.5-moe": {
        "architectures": ["PhiMoEForCausalLM"], "model_type": "phimoe", "hidden_size": 4096,
        "intermediate_size": 6400, "num_attention_heads": 32, "num_experts_per_tok": 2,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 16,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32064},
    "switch-base-8": {
        "architectures": ["SwitchTransformersForConditionalGeneration"],
        "model_type": "switch_transformers", "d_ff": 3072, "d_kv": 64, "d_model": 768,
        "decoder_sparse_step": 2, "encoder_sparse_step": 2, "num_decoder_layers": 12,
        "num_experts": 8, "num_heads": 12, "num_layers": 12, "num_sparse_decoder_layers": 6,
        "num_sparse_encoder_layers": 6, "torch_dtype": "float32", "vocab_size": 32128},
}
CONFIGS["deepseek-v3"] = {
    **CONFIGS["deepseek-v2-lite"], "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3", "first_k_dense_replace": 3, "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_group": 8,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "topk_group": 4,
    "topk_method": "noaux_tc", "vocab_size": 129280,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]}}
CONFIGS["qwen3-235b-a22b"] = {**CONFIGS["qwen3-30b-a3b"], "hidden_size": 4096,
                              "intermediate_size": 12288, "moe_intermediate_size": 1536,
                              "num_attention_heads": 64, "num_hidden_layers": 94}
CONFIGS["qwen2-57b-a14b"] = {**CONFIGS["qwen1.5-moe-a2.7b"], "hidden_size": 3584,
                             "intermediate_size": 18944, "moe_intermediate_size": 2560,
                             "num_attention_heads": 28, "num_experts": 64,
                             "num_experts_per_tok": 8, "num_hidden_layers": 28,
                             "num_key_value_heads": 4, "shared_expert_intermediate_size": 20480}
CONFIGS["gpt-oss-120b"] = {**CONFIGS["gpt-oss-20b"], "num_hidden_layers": 36,
                           "num_local_experts": 128}
CONFIGS["switch-base-128"] = {**CONFIGS["switch-base-8"], "num_experts": 128}
SHAPE = ("num_layers", "first_k_dense", "moe_layer_step", "num_experts", "top_k",
         "num_shared_experts", "shared_intermediate_size", "hidden_size",
         "expert_intermediate_size", "expert_matrices", "expert_bias", "attention",
         "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_catalog_models_configs_give_the_catalog_shapes(name):
    got = spec_from_hf_config(CONFIGS[name], name)
    want = load_model(name)
    assert {f: getattr(got, f) for f in SHAPE} == {f: getattr(want, f) for f in SHAPE}
    assert got.moe_layer_indices == want.moe_layer_indices
    if not name.startswith("switch"):  # the catalog lists Switch's 12 dense FFN blocks as 0
        assert got.dense_intermediate_size == want.dense_intermediate_size
    # resident bytes, estimated from the shapes, against the catalog's counted ones (bf16, given
    # to 0.01 GB): within 1% or the catalog's rounding
    dtype_bytes = 4.0 if CONFIGS[name]["torch_dtype"] == "float32" else 2.0
    estimated_bf16 = got.non_expert_bytes / dtype_bytes * 2.0
    assert abs(estimated_bf16 - want.non_expert_bytes) <= max(0.01 * want.non_expert_bytes, 5e6)


def test_quantized_checkpoints_count_expert_bytes_at_their_storage():
    v3 = spec_from_hf_config(CONFIGS["deepseek-v3"], "v3")
    assert v3.expert_bytes_per_param == pytest.approx(1.0 + 4.0 / (128 * 128))
    assert v3.expert_bytes / 1e6 == pytest.approx(44.05, abs=0.05)  # catalog note: ~44 MB
    oss = spec_from_hf_config(CONFIGS["gpt-oss-20b"], "oss")
    assert oss.expert_bytes_per_param == 4.25 / 8
    assert oss.expert_bytes / 1e6 == pytest.approx(13.2, abs=0.1)  # catalog note: ~13.2 MB
    gptq = {**MIXTRAL, "quantization_config": {"quant_method": "gptq", "bits": 4,
                                               "group_size": 128}}
    assert spec_from_hf_config(gptq, "m").expert_bytes_per_param == pytest.approx(
        0.5 + 2.5 / 128)
    odd = {**MIXTRAL, "quantization_config": {"quant_method": "exotic"}}
    spec = spec_from_hf_config(odd, "m")
    assert spec.expert_bytes_per_param == 2.0 and "not understood" in spec.notes


@pytest.mark.parametrize("config, blocks, shared", [
    # Jamba: every other block has experts (expert_layer_period 2, offset 1)
    ({"model_type": "jamba", "num_hidden_layers": 8, "num_experts": 16, "num_experts_per_tok": 2,
      "expert_layer_period": 2, "expert_layer_offset": 1, "hidden_size": 64,
      "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
      "vocab_size": 100}, (1, 3, 5, 7), (0, 0)),
    # Llama-4 Maverick: the language model under text_config, MoE every second block, a shared
    # expert, dense blocks of intermediate_size_mlp
    ({"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
      "torch_dtype": "bfloat16",
      "text_config": {"model_type": "llama4_text", "num_hidden_layers": 6,
                      "num_local_experts": 128, "num_experts_per_tok": 1,
                      "interleave_moe_layer_step": 2, "hidden_size": 64,
                      "intermediate_size": 32, "intermediate_size_mlp": 128,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                      "vocab_size": 100}}, (1, 3, 5), (1, 32)),
    # DBRX: the MoE numbers in ffn_config
    ({"model_type": "dbrx", "n_layers": 4, "d_model": 64, "n_heads": 4, "vocab_size": 100,
      "attn_config": {"kv_n_heads": 2},
      "ffn_config": {"moe_num_experts": 16, "moe_top_k": 4, "ffn_hidden_size": 96}},
     (0, 1, 2, 3), (0, 0)),
    # Ernie-4.5-MoE: MoE from moe_layer_start_index, two shared experts
    ({"model_type": "ernie4_5_moe", "num_hidden_layers": 5, "moe_num_experts": 64, "moe_k": 6,
      "moe_layer_start_index": 1, "moe_layer_interval": 1, "moe_num_shared_experts": 2,
      "moe_intermediate_size": 24, "intermediate_size": 96, "hidden_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100},
     (1, 2, 3, 4), (2, 24)),
    # Qwen3-MoE with a sparse step: blocks 1, 3 (the (i + 1) % step rule)
    ({"model_type": "qwen3_moe", "num_hidden_layers": 4, "num_experts": 8,
      "num_experts_per_tok": 2, "decoder_sparse_step": 2, "moe_intermediate_size": 24,
      "intermediate_size": 64, "hidden_size": 32, "num_attention_heads": 4,
      "num_key_value_heads": 2, "vocab_size": 100}, (1, 3), (0, 0)),
])
def test_other_architectures_layer_rules(config, blocks, shared):
    spec = spec_from_hf_config(config, "x")
    assert spec.moe_layer_indices == blocks
    assert (spec.num_shared_experts, spec.shared_intermediate_size) == shared


def test_dense_and_unrepresentable_configs_are_refused(tmp_path):
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "vocab_size": 128256}
    with pytest.raises(ConfigError, match="not a Mixture-of-Experts config .model_type 'llama'"):
        spec_from_hf_config(llama, "llama")
    holes = {**CONFIGS["qwen3-30b-a3b"], "num_hidden_layers": 6, "mlp_only_layers": [2]}
    with pytest.raises(ConfigError, match="do not follow a dense-prefix-plus-step pattern"):
        spec_from_hf_config(holes, "q")
    no_k = {k: v for k, v in MIXTRAL.items() if k != "num_experts_per_tok"}
    with pytest.raises(ConfigError, match="no experts per token"):
        spec_from_hf_config(no_k, "m")


def test_load_model_spec_reads_files_folders_names_and_yaml(tmp_path):
    folder = tmp_path / "Mixtral-8x7B-v0.1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MIXTRAL))
    from_folder = load_model_spec(folder)
    from_file = load_model_spec(folder / "config.json")
    assert from_folder == from_file and from_file.name == "Mixtral-8x7B-v0.1"
    assert from_file.extra["source"] == "hf-config"
    assert load_model_spec("mixtral-8x7b").name == "mixtral-8x7b"
    assert spec_from_hf_config_file(folder / "config.json", name="m").name == "m"
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{oops")
    for path, match in ((tmp_path / "list.json", "expected a JSON object"),
                        (tmp_path / "bad.json", "not valid JSON"),
                        (tmp_path / "none.json", "no such file")):
        with pytest.raises(ConfigError, match=match) as info:
            load_model_spec(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
