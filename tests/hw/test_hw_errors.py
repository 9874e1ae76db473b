"""Bad input gives one clear ConfigError."""

from __future__ import annotations

import pytest
from hw_testing import CAPACITY, single_thread_torch, tiny_spec, tiny_trace
from moe_offload_lab.hw.replay import run_replay
from moe_offload_lab.hw.run import run_from_config
from moe_offload_lab.policies.toy_traces import make_trace, toy_spec
from moe_offload_lab.traces.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield from single_thread_torch()


def test_budget_below_one_layer() -> None:
    spec = tiny_spec()
    with pytest.raises(ConfigError, match="one layer needs 2"):
        run_replay(spec, tiny_trace(), "lru", gpu_memory_gb=spec.expert_bytes / 1e9)


def test_slots_below_top_k_and_above_the_model() -> None:
    with pytest.raises(ConfigError, match="smaller than one layer's top-k"):
        run_replay(tiny_spec(), tiny_trace(), "lru", capacity_slots=1)
    with pytest.raises(ConfigError, match="exceeds"):
        run_replay(tiny_spec(), tiny_trace(), "lru", capacity_slots=1000)


def test_exactly_one_cache_size() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        run_replay(tiny_spec(), tiny_trace(), "lru")
    with pytest.raises(ConfigError, match="exactly one"):
        run_replay(tiny_spec(), tiny_trace(), "lru", capacity_slots=4, gpu_memory_gb=1.0)


def test_trace_of_another_model() -> None:
    other = make_trace(toy_spec(num_layers=3, num_experts=16, top_k=2, name="other"), 12)
    with pytest.raises(ConfigError, match=r"trace of 'other' does not fit .*num_experts"):
        run_replay(tiny_spec(), other, "lru", capacity_slots=CAPACITY)


def test_scaled_down_model_may_replay_a_trace_of_the_full_one() -> None:
    spec = tiny_spec().with_overrides(hidden_size=16, expert_intermediate_size=24)
    result = run_replay(spec, tiny_trace(), "lru", capacity_slots=CAPACITY)
    assert result.summary["steps"] > 0


def test_policy_needed_and_batch_checked() -> None:
    with pytest.raises(ConfigError, match="policy is needed"):
        run_replay(tiny_spec(), tiny_trace(), None, capacity_slots=CAPACITY)
    with pytest.raises(ConfigError, match="batch"):
        run_replay(tiny_spec(), tiny_trace(), "lru", capacity_slots=CAPACITY, batch=0)
    with pytest.raises(ConfigError, match="unknown"):
        run_replay(tiny_spec(), tiny_trace(), "no-such-policy", capacity_slots=CAPACITY)


def test_run_from_config(tmp_path) -> None:  # noqa: ANN001
    path = tiny_trace().save(tmp_path / "tiny.parquet")
    cfg = {"model": tiny_spec().to_dict(), "trace": {"path": str(path)}, "policy": "lru",
           "cache": {"slots": CAPACITY}, "batch": 3}
    result = run_from_config(cfg)
    assert result.summary["policy"] == "lru" and result.summary["batch"] == 3
    with pytest.raises(ConfigError, match="unknown replay config key"):
        run_from_config({**cfg, "bogus": 1})
    with pytest.raises(ConfigError, match="cache must be"):
        run_from_config({**cfg, "cache": {"fraction": 0.5}})
    with pytest.raises(ConfigError, match="needs a model"):
        run_from_config({"policy": "lru"})


def test_run_from_config_scaled_down_named_model() -> None:
    cfg = {"model": "mixtral-8x7b",
           "model_overrides": {"num_layers": 2, "hidden_size": 32, "expert_intermediate_size": 32,
                               "num_attention_heads": 4, "num_kv_heads": 2, "head_dim": 8},
           "trace": {"preset": "mixtral-8x7b", "tokens": 24}, "policy": "lru",
           "cache": {"slots": 4}}
    # the preset's routing is generated on the scaled-down shape, so the trace fits
    result = run_from_config(cfg)
    assert result.summary["tokens"] == 24
    cfg["trace"] = {"path": None, "bundled": "tiny-moe-stdlib"}  # a recorded trace cannot be
    with pytest.raises(ConfigError, match="num_moe_layers"):      # resized: 4 MoE layers != 2
        run_from_config(cfg)
