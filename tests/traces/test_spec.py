"""ModelSpec and the bundled model catalog (conf/model/*.yaml)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from moe_offload_lab.traces import ConfigError, ModelSpec, available, load_model

# Reference values copied from the shared reference/models.md ("Real MoE model shapes"), one row
# per bundled config (the table's Switch-Base row covers switch-base-8 and switch-base-128).
# Sizes are written as the table prints them: "bytes / expert" in MB (1e6 bytes) and "all routed
# experts" in GB (1e9 bytes), compared at the table's precision. GPT-OSS experts include biases.
# Columns: config, MoE layers, total layers, routed E, top-k, shared experts, H, I (expert),
#          MB per expert, GB all routed experts, GB non-expert.
MODELS_MD = [
    ("mixtral-8x7b", 32, 32, 8, 2, 0, 4096, 14336, "352.3", "90.19", "3.21"),
    ("mixtral-8x22b", 56, 56, 8, 2, 0, 6144, 16384, "604.0", "270.58", "10.66"),
    ("deepseek-v2-lite", 26, 27, 64, 6, 2, 2048, 1408, "17.30", "28.79", "2.62"),
    ("deepseek-v3", 58, 61, 256, 8, 1, 7168, 2048, "88.08", "1307.8", "34.24"),
    ("qwen1.5-moe-a2.7b", 24, 24, 60, 4, 1, 2048, 1408, "17.30", "24.91", "3.72"),
    ("qwen2-57b-a14b", 28, 28, 64, 8, 1, 3584, 2560, "55.05", "98.65", "16.17"),
    ("qwen3-30b-a3b", 48, 48, 128, 8, 0, 2048, 768, "9.44", "57.98", "3.08"),
    ("qwen3-235b-a22b", 94, 94, 128, 8, 0, 4096, 1536, "37.75", "454.19", "15.99"),
    ("olmoe-1b-7b", 16, 16, 64, 8, 0, 2048, 1024, "12.58", "12.88", "0.95"),
    ("gpt-oss-20b", 24, 24, 32, 4, 0, 2880, 2880, "49.78", "38.23", "3.60"),
    ("gpt-oss-120b", 36, 36, 128, 4, 0, 2880, 2880, "49.78", "229.40", "4.26"),
    ("phi-3.5-moe", 32, 32, 16, 2, 0, 4096, 6400, "157.3", "80.53", "3.21"),
    ("switch-base-8", 12, 24, 8, 1, 0, 768, 3072, "9.44", "0.91", "0.33"),
    ("switch-base-128", 12, 24, 128, 1, 0, 768, 3072, "9.44", "14.5", "0.33"),
]

# Shared-expert and dense-layer sizes the table names in its columns and notes.
SHARED_INTERMEDIATE = {"deepseek-v2-lite": 1408, "qwen1.5-moe-a2.7b": 5632, "qwen2-57b-a14b": 20480}
DENSE_LAYERS = {"deepseek-v2-lite": (1, 10944), "deepseek-v3": (3, 18432)}

TINY = {"name": "tiny", "num_layers": 4, "num_experts": 8, "top_k": 2, "hidden_size": 16,
        "expert_intermediate_size": 32}


def as_printed(value: float, printed: str) -> str:
    """``value`` rounded to as many decimals as ``printed`` shows."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return f"{value:.{decimals}f}"


# ---- the catalog against the reference table ----------------------------------------------------
def test_every_bundled_model_is_in_the_table() -> None:
    from moe_offload_lab.traces.bundled import (
        BUNDLED,  # models trained here for the bundled real traces
    )

    assert sorted(row[0] for row in MODELS_MD) == [m for m in available("model")
                                                   if m not in BUNDLED]
    assert len(MODELS_MD) == 14  # 13 table rows, Switch-Base split in two configs


@pytest.mark.parametrize(
    ("name", "moe_layers", "total_layers", "experts", "top_k", "shared", "hidden", "inter",
     "mb_per_expert", "gb_routed", "gb_non_expert"),
    MODELS_MD, ids=[row[0] for row in MODELS_MD])
def test_bundled_model_matches_models_md(name, moe_layers, total_layers, experts, top_k, shared,
                                         hidden, inter, mb_per_expert, gb_routed,
                                         gb_non_expert) -> None:
    spec = load_model(name)
    assert spec.name == name
    assert spec.num_moe_layers == moe_layers
    assert len(spec.moe_layer_indices) == moe_layers
    assert spec.num_layers == total_layers
    assert spec.num_experts == experts
    assert spec.top_k == top_k
    assert spec.num_shared_experts == shared
    assert spec.hidden_size == hidden
    assert spec.expert_intermediate_size == inter
    assert spec.expert_bytes_per_param == 2.0  # the table is bf16
    assert as_printed(spec.expert_bytes / 1e6, mb_per_expert) == mb_per_expert
    assert as_printed(spec.routed_expert_bytes / 1e9, gb_routed) == gb_routed
    assert as_printed(spec.non_expert_bytes / 1e9, gb_non_expert) == gb_non_expert
    assert spec.num_expert_keys == moe_layers * experts
    assert spec.routed_expert_bytes == spec.expert_bytes * moe_layers * experts
    if name in SHARED_INTERMEDIATE:
        assert spec.shared_intermediate_size == SHARED_INTERMEDIATE[name]
    if name in DENSE_LAYERS:
        assert (spec.first_k_dense, spec.dense_intermediate_size) == DENSE_LAYERS[name]


def test_expert_bytes_formula() -> None:
    # SwiGLU experts: 3 * H * I * 2 bytes.
    mixtral = load_model("mixtral-8x7b")
    assert mixtral.expert_bytes == 3 * 4096 * 14336 * 2
    # GPT-OSS adds a bias per gate and up row (2I) and per down output (H).
    gpt = load_model("gpt-oss-20b")
    assert gpt.expert_bias
    assert gpt.expert_params == 3 * 2880 * 2880 + 2 * 2880 + 2880
    assert gpt.expert_bytes == 2 * gpt.expert_params
    # Switch: two matrices, no gate.
    switch = load_model("switch-base-8")
    assert switch.expert_matrices == 2
    assert switch.expert_bytes == 2 * 768 * 3072 * 2


def test_moe_layer_indices() -> None:
    assert load_model("mixtral-8x7b").moe_layer_indices == tuple(range(32))
    assert load_model("deepseek-v2-lite").moe_layer_indices == tuple(range(1, 27))
    assert load_model("deepseek-v3").moe_layer_indices == tuple(range(3, 61))
    assert load_model("switch-base-8").moe_layer_indices == tuple(range(1, 24, 2))


def test_shared_expert_bytes() -> None:
    assert load_model("deepseek-v2-lite").shared_expert_bytes == 2 * 3 * 2048 * 1408 * 2
    assert load_model("mixtral-8x7b").shared_expert_bytes == 0


def test_expert_flops() -> None:
    spec = load_model("mixtral-8x7b")
    assert spec.expert_flops(10) == 2 * 3 * 4096 * 14336 * 10


# ---- quantized experts --------------------------------------------------------------------------
def test_four_bit_mixtral() -> None:
    bf16 = load_model("mixtral-8x7b")
    q4 = load_model("mixtral-8x7b", expert_bytes_per_param=0.5)
    assert q4.expert_bytes * 4 == bf16.expert_bytes
    assert f"{q4.expert_bytes / 1e6:.2f}" == "88.08"
    assert q4.routed_expert_bytes * 4 == bf16.routed_expert_bytes
    # Only the bytes change.
    assert dataclasses.replace(q4, expert_bytes_per_param=2.0) == bf16


def test_mxfp4_gpt_oss() -> None:
    # MXFP4: 4 bits plus one 8-bit scale per 32 values = 4.25 bits = 0.53125 bytes per parameter.
    for name in ("gpt-oss-20b", "gpt-oss-120b"):
        spec = load_model(name).with_overrides(expert_bytes_per_param=0.53125)
        assert spec.expert_bytes / 1e6 == pytest.approx(13.2, abs=0.05)
        assert f"{spec.expert_bytes / 1e6:.1f}" == "13.2"


def test_expert_bytes_round_up_to_whole_bytes() -> None:
    spec = ModelSpec.from_dict({**TINY, "hidden_size": 3, "expert_intermediate_size": 3,
                                "expert_bytes_per_param": 0.5})
    assert spec.expert_params == 27
    assert spec.expert_bytes == math.ceil(27 * 0.5) == 14


def test_with_overrides_validates() -> None:
    spec = load_model("olmoe-1b-7b")
    with pytest.raises(ConfigError, match="top_k"):
        spec.with_overrides(top_k=65)
    with pytest.raises(ConfigError, match="unknown field"):
        spec.with_overrides(bits=4)
    with pytest.raises(ConfigError, match="expert_bytes_per_param"):
        load_model("olmoe-1b-7b", expert_bytes_per_param=0)


# ---- from_dict / to_dict ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [row[0] for row in MODELS_MD])
def test_round_trip(name: str) -> None:
    spec = load_model(name)
    data = spec.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(ModelSpec)}
    assert ModelSpec.from_dict(data) == spec
    # The dict is JSON-safe (it is what a trace file stores).
    assert ModelSpec.from_dict(json.loads(json.dumps(data))) == spec


def test_defaults() -> None:
    spec = ModelSpec.from_dict(TINY)
    assert (spec.first_k_dense, spec.moe_layer_step, spec.expert_matrices) == (0, 1, 3)
    assert spec.expert_bytes_per_param == 2.0
    assert spec.attention == "gqa"
    assert spec.extra == {}
    assert spec.num_moe_layers == 4


def test_frozen() -> None:
    spec = ModelSpec.from_dict(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.top_k = 3  # type: ignore[misc]


def test_unknown_fields_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown field.*bits.*experts_per_tok"):
        ModelSpec.from_dict({**TINY, "experts_per_tok": 2, "bits": 4})


@pytest.mark.parametrize("field", ["name", "num_layers", "num_experts", "top_k", "hidden_size",
                                   "expert_intermediate_size"])
def test_missing_fields_rejected(field: str) -> None:
    data = {k: v for k, v in TINY.items() if k != field}
    with pytest.raises(ConfigError, match=f"lacks required field.*{field}"):
        ModelSpec.from_dict(data)


@pytest.mark.parametrize("data", [None, [], "mixtral", 3])
def test_not_a_mapping(data) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        ModelSpec.from_dict(data)


BAD_VALUES = [
    ("num_layers", 0), ("num_layers", -1), ("num_layers", 1.5), ("num_layers", "4"),
    ("num_layers", True), ("num_layers", None), ("num_layers", 10**9),
    ("num_experts", 0), ("num_experts", 40000), ("num_experts", 8.0),
    ("top_k", 0), ("top_k", 9), ("top_k", "2"),
    ("hidden_size", -16), ("expert_intermediate_size", 0),
    ("first_k_dense", -1), ("first_k_dense", 4), ("first_k_dense", 1.5), ("first_k_dense", "1"),
    ("moe_layer_step", 0), ("moe_layer_step", 5),  # 5 > num_layers leaves no MoE layer
    ("expert_matrices", 1), ("expert_matrices", 4), ("expert_matrices", 3.0),
    ("expert_bias", "yes"), ("expert_bias", 1),
    ("expert_bytes_per_param", 0), ("expert_bytes_per_param", -0.5),
    ("expert_bytes_per_param", float("nan")), ("expert_bytes_per_param", float("inf")),
    ("expert_bytes_per_param", "2"), ("expert_bytes_per_param", True),
    ("expert_bytes_per_param", None), ("expert_bytes_per_param", 10**400),
    ("attention", "flash"), ("attention", ["gqa"]),
    ("num_shared_experts", -1), ("num_shared_experts", 1.5), ("non_expert_bytes", -1),
    ("num_attention_heads", "x"), ("num_kv_heads", None), ("head_dim", -64), ("vocab_size", 0.5),
    ("name", 3), ("name", None), ("hf_architecture", 1), ("notes", ["a"]), ("extra", [1]),
    ("extra", "x"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES,
                         ids=[f"{f}={v!r}"[:40] for f, v in BAD_VALUES])
def test_bad_values_rejected(field: str, value) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSpec.from_dict({**TINY, field: value})
    message = str(info.value)
    assert "\n" not in message
    if field not in ("name", "moe_layer_step"):
        assert field in message


def test_no_moe_layer_rejected() -> None:
    with pytest.raises(ConfigError, match="no MoE layer"):
        ModelSpec.from_dict({**TINY, "num_layers": 3, "first_k_dense": 2, "moe_layer_step": 2})


def test_every_other_layer() -> None:
    spec = ModelSpec.from_dict({**TINY, "num_layers": 6, "moe_layer_step": 2})
    assert spec.moe_layer_indices == (1, 3, 5)
    spec = ModelSpec.from_dict({**TINY, "num_layers": 7, "first_k_dense": 1, "moe_layer_step": 2})
    assert spec.moe_layer_indices == (2, 4, 6)


# ---- the catalog --------------------------------------------------------------------------------
def test_unknown_model_names_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_model("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in available("model"):
        assert name in message


def test_custom_catalog(tmp_path, monkeypatch) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "".join(f"{k}: {v}\n" for k, v in TINY.items()), encoding="utf-8")
    (tmp_path / "model" / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    (tmp_path / "model" / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    monkeypatch.setenv("MOE_LAB_CONF", str(tmp_path))
    assert available("model") == ["broken", "list", "mine"]
    assert load_model("mine") == ModelSpec.from_dict(TINY)
    assert load_model("mine", top_k=3).top_k == 3
    with pytest.raises(ConfigError, match="broken.yaml: cannot read YAML"):
        load_model("broken")
    with pytest.raises(ConfigError, match="mapping"):
        load_model("list")
    monkeypatch.setenv("MOE_LAB_CONF", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="configuration folder not found"):
        load_model("mine")
