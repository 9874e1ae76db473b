"""``checkpoint: auto``: what a predictor is trained on, the cache key, train-once-then-load,
and a policy built on it."""

from __future__ import annotations

import json

import pytest
from moe_offload_lab.policies import build_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.learned import autotrain
from moe_offload_lab.policies.learned.autotrain import Recipe, obtain, preset_of, training_data
from moe_offload_lab.policies.toy_traces import make_trace, toy_spec
from moe_offload_lab.traces import load_model
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.synthetic import generate

FAST = ("train.epochs=1", "train.max_steps=3", "cost.repeats=1", "cost.warmup=0",
        "predictor.size=tiny")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(autotrain.ENV, str(tmp_path))
    monkeypatch.setattr(autotrain, "_MEMORY", {})
    return tmp_path / "predictors"


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(autotrain.ENV, str(tmp_path / "mine"))
    assert autotrain.cache_root() == tmp_path / "mine" / "predictors"
    monkeypatch.delenv(autotrain.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotrain.cache_root() == tmp_path / "xdg" / "moe-offload-lab" / "predictors"


def test_training_source_follows_the_replayed_trace() -> None:
    spec = load_model("switch-base-8")
    synthetic = generate("switch-base-8", tokens=50, seed=3)
    assert preset_of(spec, synthetic) == "switch-base-8"
    assert preset_of(spec, None) == "switch-base-8"  # no replayed trace: the model's preset
    toy = make_trace(toy_spec(4, 8, 2), 30, requests=3)
    assert preset_of(toy.spec, toy) is None  # not from a preset: train on the trace itself
    identity, _ = training_data(spec, synthetic, Recipe(tokens=400, seed=90001))
    assert identity["source"] == "preset" and identity["seed"] == 90001
    identity, build = training_data(toy.spec, toy, Recipe())
    assert identity["source"] == "trace" and build()[1]["optimistic"]
    with pytest.raises(ConfigError, match="no synthetic preset"):
        training_data(toy.spec, None, Recipe())
    with pytest.raises(ConfigError, match="train_source"):
        Recipe(source="somewhere")


def test_trains_once_then_loads_and_keys_on_the_training_trace(cache, monkeypatch) -> None:
    monkeypatch.setattr(autotrain, "DISK_MIN_EXAMPLES", 0)  # write even this small one
    spec = load_model("switch-base-8")
    recipe = Recipe(tokens=400, overrides=FAST)
    model, meta = obtain(spec, None, recipe, progress=False)
    stem = f"history-transformer-{meta['auto']['key']}"
    assert sorted(p.name for p in (cache / "switch-base-8").glob("*.pt")) == [f"{stem}.pt"]
    written = json.loads((cache / "switch-base-8" / f"{stem}.json").read_text())
    assert written["auto"]["identity"]["preset"] == "switch-base-8"
    assert written["trace"]["seed"] == 90001 and written["cost"]["cpu"]["fixed_s"] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(autotrain, "_train", no_training)
    again, meta_again = obtain(spec, None, recipe, progress=False)
    assert meta_again["auto"]["key"] == meta["auto"]["key"]
    assert all((a == b).all() for a, b in zip(model.state_dict().values(),
                                              again.state_dict().values(), strict=True))
    with pytest.raises(AssertionError, match="trained again"):  # another trace: another key
        obtain(spec, None, Recipe(tokens=400, seed=7, overrides=FAST), progress=False)


def test_a_policy_with_an_auto_checkpoint_runs_and_declares_its_cost(cache) -> None:
    trace = make_trace(toy_spec(4, 8, 2), 60, requests=4, seed=2)
    policy = build_policy({"name": "p", "horizon": 3, "predictor": {
        "name": "learned", "checkpoint": "auto", "train_overrides": list(FAST)},
        "planner": {"name": "lookahead", "min_confidence": 0.2},
        "replacement": {"name": "confidence"}})
    assert policy.decision_cost.fixed_s < 1e-4  # nothing trained yet
    result = evaluate(trace, policy, 12, batch=2)
    assert policy.predictor.meta["auto"]["identity"]["source"] == "trace"
    assert policy.decision_cost.fixed_s > policy.planner.decision_cost.fixed_s
    assert 0 < result.cache.hit_ratio <= 1
    assert not any(cache.glob("*/*.pt"))  # a toy trace is kept in memory, never written
