"""Small pieces of the recorder: layer patterns, prompt files, tokenizers, the bundled trace."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.record.model_spec import layer_pattern
from moe_offload_lab.traces.record.prompts import ByteTokenizer, load_prompts, load_tokenizer
from moe_offload_lab.traces.spec import ModelSpec


@pytest.mark.parametrize("layers, blocks, expected", [
    (4, [0, 1, 2, 3], (0, 1)),
    (4, [1, 3], (0, 2)),
    (27, list(range(1, 27)), (1, 1)),
    (61, list(range(3, 61)), (3, 1)),
    (6, [3, 5], (2, 2)),
])
def test_layer_pattern_reproduces_the_moe_blocks(layers, blocks, expected):
    first, step = layer_pattern(layers, blocks)
    assert (first, step) == expected
    spec = ModelSpec(name="x", num_layers=layers, num_experts=4, top_k=2, hidden_size=8,
                     expert_intermediate_size=8, first_k_dense=first, moe_layer_step=step)
    assert list(spec.moe_layer_indices) == blocks


def test_a_pattern_a_modelspec_cannot_describe_is_refused():
    with pytest.raises(ConfigError, match="pattern that a ModelSpec can describe"):
        layer_pattern(6, [0, 1, 4])


def test_text_prompts_skip_blank_lines_and_keep_spaces(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffone\r\n\r\n  two  \n\t\nthree".encode())
    assert load_prompts(path) == ["one", "  two  ", "three"]


def test_byte_tokenizer_wraps_bytes_into_the_vocabulary():
    assert ByteTokenizer(256).encode("aé") == [97, 0xC3, 0xA9]
    assert ByteTokenizer(100).encode("a") == [97 % 100]
    assert isinstance(load_tokenizer(None, 256), ByteTokenizer)


def test_bundled_trace_is_found_and_valid():
    import moe_offload_lab.traces.bundled as bundled

    trace = bundled.load()
    assert bundled.path().name == "tiny-moe-stdlib.parquet"
    assert trace.lookahead_distances == [1, 2]
    assert trace.features is not None and trace.features.shape[2] == 16
    assert trace.provenance["dataset"]["name"] == "python-stdlib-docstrings"
    # the load-balancing loss kept every expert in use
    share = np.bincount(trace.expert_ids.reshape(-1), minlength=trace.spec.num_experts)
    assert (share > 0).all()
    with pytest.raises(ConfigError):
        bundled.path("nothing")


def test_a_model_whose_moe_blocks_have_no_modelspec_pattern_is_refused(prompts):
    from moe_offload_lab.traces.record import record
    from moe_offload_lab.traces.record.tiny import build_model, config_from_spec

    config, _ = config_from_spec('{"model_type": "qwen2_moe", "vocab_size": 256, '
                                 '"hidden_size": 16, "num_hidden_layers": 4, '
                                 '"num_attention_heads": 2, "num_key_value_heads": 2, '
                                 '"intermediate_size": 16, "moe_intermediate_size": 8, '
                                 '"shared_expert_intermediate_size": 8, "num_experts": 4, '
                                 '"num_experts_per_tok": 2, "mlp_only_layers": [2]}')
    with pytest.raises(ConfigError, match=r"MoE blocks \[0, 1, 3\]"):
        record(build_model(config), prompts, progress=False)


@pytest.mark.parametrize("config_class, expected", [
    # reference/models.md: MoE layers, experts, top-k, MB per expert, GB non-expert
    ("MixtralConfig", (32, 8, 2, 0, 352.32, 3.21)),
    ("DeepseekV3Config", (58, 256, 8, 3, 88.08, 34.24)),
    ("Qwen2MoeConfig", (24, 60, 4, 0, 17.30, 3.72)),
])
def test_spec_of_a_full_size_model_matches_the_published_shape(config_class, expected):
    import torch
    import transformers
    from moe_offload_lab.traces.record.adapters import find_routers
    from moe_offload_lab.traces.record.model_spec import spec_from_model

    config = getattr(transformers, config_class)()
    config.dtype = torch.bfloat16
    with torch.device("meta"):  # shapes only, no memory
        model = transformers.AutoModelForCausalLM.from_config(config)
    spec = spec_from_model(model, find_routers(model), name=config_class)
    layers, experts, top_k, first_dense, expert_mb, non_expert_gb = expected
    assert (spec.num_moe_layers, spec.num_experts, spec.top_k, spec.first_k_dense) == (
        layers, experts, top_k, first_dense)
    assert round(spec.expert_bytes / 1e6, 2) == expert_mb
    assert round(spec.non_expert_bytes / 1e9, 2) == non_expert_gb
