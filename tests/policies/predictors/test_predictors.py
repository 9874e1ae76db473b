"""Predictor quality on traces with known structure."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies import build_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.toy_traces import make_trace, toy_spec
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, Trace
from policy_testing import random_trace


def _quality(trace: Trace, predictor: dict, horizon: int = 1, batch: int = 1,
             capacity: int | None = None) -> dict:
    policy = build_policy({"name": predictor["name"], "horizon": horizon,
                           "predictor": predictor})
    capacity = capacity or trace.spec.num_expert_keys
    return evaluate(trace, policy, capacity, batch=batch).to_dict()["prediction"]


@pytest.mark.parametrize("batch", [1, 3])
def test_oracle_recall_is_one(batch: int) -> None:
    trace = random_trace(5, 90, 5, 8, 2, lookahead=())
    quality = _quality(trace, {"name": "oracle"}, horizon=3, batch=batch)
    for row in quality["per_distance"]:
        assert row["recall"] == 1.0 and row["precision"] == 1.0 and row["topk_accuracy"] == 1.0
    assert all(row["recall"] == 1.0 for row in quality["per_layer"])


def test_oracle_needs_the_trace() -> None:
    policy = build_policy({"name": "o", "predictor": {"name": "oracle"}})
    from moe_offload_lab.policies import CostModel

    spec = toy_spec()
    with pytest.raises(ConfigError, match="oracle"):
        policy.reset(spec, 4, CostModel.for_spec(spec))


@pytest.mark.parametrize("errors", [{1: 0.0, 2: 0.0}, {1: 0.1, 2: 0.3}, {1: 0.45, 2: 0.2}])
def test_gate_lookahead_reproduces_the_corruption_rate(errors: dict[int, float]) -> None:
    spec = toy_spec(4, 8, 2)
    trace = make_trace(spec, 2500, requests=5, seed=7, lookahead=(1, 2), lookahead_error=errors)
    quality = _quality(trace, {"name": "gate-lookahead", "confidence": [0.9, 0.8]}, horizon=2)
    for row in quality["per_distance"]:
        rate = errors[row["distance"]]
        n = row["actual"]
        tolerance = 4 * np.sqrt(max(rate * (1 - rate), 1e-4) / n)  # 4 standard errors
        assert abs(row["topk_accuracy"] - (1 - rate)) <= tolerance
        # every pick scores 0.9 or 0.8 >= the 0.5 threshold: precision = recall = accuracy
        assert row["precision"] == pytest.approx(row["topk_accuracy"])
        assert row["recall"] == pytest.approx(row["topk_accuracy"])


def test_gate_lookahead_without_columns_predicts_nothing() -> None:
    trace = random_trace(1, 20, 3, 8, 2, lookahead=())
    quality = _quality(trace, {"name": "gate-lookahead"})
    assert quality["per_distance"][0]["predicted"] == 0
    assert quality["per_distance"][0]["recall"] == 0.0


def _chain_trace(tokens: int, n_layers: int = 4, n_experts: int = 8, seed: int = 0) -> Trace:
    """Top-1 routing where layer l+1's expert is a fixed function of layer l's."""
    rng = np.random.default_rng(seed)
    spec = toy_spec(n_layers, n_experts, 1)
    maps = [rng.permutation(n_experts) for _ in range(n_layers)]
    ids = np.zeros((tokens, n_layers, 1), np.int16)  # [T, L, 1]
    ids[:, 0, 0] = rng.integers(0, n_experts, tokens)
    for layer in range(1, n_layers):
        ids[:, layer, 0] = maps[layer][ids[:, layer - 1, 0]]
    return Trace(spec=spec, request_id=np.zeros(tokens, np.int32),
                 position=np.arange(tokens, dtype=np.int32), phase=np.full(tokens, DECODE, np.int8),
                 expert_ids=ids, gate_weights=np.ones(ids.shape, np.float32))


def test_history_learns_transitions() -> None:
    trace = _chain_trace(600)
    quality = _quality(trace, {"name": "history"}, horizon=2)
    for row in quality["per_distance"]:
        assert row["topk_accuracy"] > 0.95  # only each expert's first sighting is unknown


def test_history_at_batch_size_beats_chance() -> None:
    trace = _chain_trace(800, n_experts=16)
    quality = _quality(trace, {"name": "history"}, batch=4)
    assert quality["per_distance"][0]["topk_accuracy"] > 0.9


def _skewed_trace(tokens: int = 1500) -> Trace:
    return make_trace(toy_spec(3, 8, 2), tokens, requests=3, seed=2, skew=2.5,
                      layer_correlation=0.0, request_bias=0.0, lookahead=())


def test_popularity_warmup_file_and_replay(tmp_path) -> None:
    trace = _skewed_trace()
    warm = _quality(trace, {"name": "popularity", "warmup_tokens": 100})
    train_path = tmp_path / "train.parquet"
    _skewed_trace(3000).save(train_path)
    filed = _quality(trace, {"name": "popularity", "source": "file",
                             "train_trace": str(train_path)})
    replay_policy = build_policy({"name": "p", "predictor": {"name": "popularity",
                                                             "source": "replay"}})
    assert replay_policy.is_oracle
    replay = evaluate(trace, replay_policy, 24).to_dict()["prediction"]
    for quality in (warm, filed, replay):
        assert quality["per_distance"][0]["topk_accuracy"] > 0.5  # skewed: popular = likely
    chance = 2 / 8
    assert replay["per_distance"][0]["topk_accuracy"] > 2 * chance


def test_popularity_file_must_match_the_model(tmp_path) -> None:
    path = tmp_path / "other.parquet"
    make_trace(toy_spec(2, 4, 1), 10, lookahead=()).save(path)
    with pytest.raises(ConfigError, match="different shape"):
        _quality(_skewed_trace(50), {"name": "popularity", "source": "file",
                                     "train_trace": str(path)})


def _repeating_requests(n_requests: int = 8, tokens: int = 12) -> Trace:
    """Requests cycle through 3 patterns; each pattern uses one fixed expert per layer."""
    spec = toy_spec(8, 16, 1)
    rng = np.random.default_rng(4)
    patterns = rng.integers(0, 16, size=(3, 8))  # [pattern, layer]
    ids = np.concatenate([np.repeat(patterns[r % 3][None, :, None], tokens, axis=0)
                          for r in range(n_requests)]).astype(np.int16)  # [T, L, 1]
    total = ids.shape[0]
    return Trace(spec=spec, request_id=np.repeat(np.arange(n_requests, dtype=np.int32), tokens),
                 position=np.tile(np.arange(tokens, dtype=np.int32), n_requests),
                 phase=np.full(total, DECODE, np.int8), expert_ids=ids,
                 gate_weights=np.ones(ids.shape, np.float32))


def test_request_similarity_matches_earlier_requests() -> None:
    trace = _repeating_requests()
    quality = _quality(trace, {"name": "similarity", "own_weight": 0.0, "rematch_layers": 2},
                       horizon=2)
    # the first 3 requests have nothing to match; the later 5 are copies of them
    assert quality["per_distance"][0]["topk_accuracy"] > 0.6
    own_only = _quality(trace, {"name": "similarity", "own_weight": 1.0}, horizon=2)
    assert own_only["per_distance"][0]["topk_accuracy"] > 0.8  # within-request repetition


def test_none_predicts_nothing() -> None:
    quality = _quality(random_trace(2, 30, 3, 8, 2), {"name": "none"}, horizon=2)
    for row in quality["per_distance"]:
        assert row["predicted"] == 0 and row["topk_accuracy"] == 0.0


def test_prediction_targets_and_dense_scores() -> None:
    prediction = Prediction(3, 4, 5)
    prediction.begin(7, 2)
    assert prediction.targets == [3, 0, 1] and prediction.wraps == [False, True, True]
    prediction.ranked[0], prediction.confidence[0] = [4, 1], [0.9, 0.2]
    dense = prediction.dense()
    assert dense.shape == (3, 5)
    assert dense[0, 4] == 0.9 and dense[0, 1] == 0.2 and dense.sum() == pytest.approx(1.1)
    assert prediction.target_keys(0) == [19, 16]
    prediction.begin(7, 3)
    assert prediction.dense().sum() == 0.0


@pytest.mark.parametrize("name", ["history", "similarity", "gate-lookahead", "popularity"])
def test_rankings_are_sorted_and_distinct(name: str) -> None:
    trace = random_trace(9, 120, 4, 16, 2, lookahead=(1, 2))
    policy = build_policy({"name": name, "horizon": 2,
                           "predictor": {"name": name} if name != "popularity"
                           else {"name": name, "warmup_tokens": 20}})
    from policy_testing import delayed_replay

    delayed_replay(policy, trace, 16, batch=3)
    prediction = policy.predictor.prediction
    for ranked, confidence in zip(prediction.ranked, prediction.confidence, strict=True):
        assert len(set(ranked)) == len(ranked) == len(confidence)
        assert list(confidence) == sorted(confidence, reverse=True)
        assert all(0.0 < c <= 1.0 for c in confidence)
        assert all(type(e) is int and 0 <= e < 16 for e in ranked)
