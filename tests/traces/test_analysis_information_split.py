"""Prophet's information split on traces whose answer is known: a deterministic successor rule
(history explains everything), independent layers (history explains nothing), and a temporal
rule (only the previous token helps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from moe_offload_lab.traces.analysis.information_split import format_table, information_split
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, Trace
from moe_offload_lab.traces.spec import ModelSpec

E, L = 8, 4


def _trace(ids: np.ndarray, requests: int) -> Trace:
    n = ids.shape[0]
    spec = ModelSpec(name="split-test", num_layers=L, num_experts=E, top_k=1, hidden_size=64,
                     expert_intermediate_size=128)
    return Trace(spec=spec, request_id=np.repeat(np.arange(requests), n // requests).astype(
        np.int32), position=np.tile(np.arange(n // requests), requests).astype(np.int32),
        phase=np.full(n, DECODE, np.int8), expert_ids=ids.astype(np.int16),
        gate_weights=np.ones(ids.shape, np.float32))


def test_a_successor_rule_is_all_history() -> None:
    rng = np.random.default_rng(0)
    ids = np.zeros((4000, L, 1), np.int64)
    ids[:, 0, 0] = rng.integers(0, E, 4000)
    for layer in range(1, L):
        ids[:, layer] = (3 * ids[:, layer - 1] + 1) % E  # a permutation of the experts
    split = information_split(_trace(ids, 40)).summary()
    assert split["max_bits"] == 3.0
    assert split["entropy_bits"] == pytest.approx(3.0, abs=0.02)
    assert split["history_bits"] == pytest.approx(3.0, abs=0.05)  # nearly all 3 bits
    assert split["residual_bits"] < 0.05
    assert split["exploitable_bits"] == pytest.approx(3.0, abs=0.05)
    assert split["consecutive_mi_bits"] == pytest.approx(3.0, abs=0.02)


def test_independent_layers_have_no_history_bits_but_skew_is_exploitable() -> None:
    rng = np.random.default_rng(1)
    p = np.array([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    ids = rng.choice(E, size=(6000, L, 1), p=p)
    split = information_split(_trace(ids, 60)).summary()
    entropy = -float((p * np.log2(p)).sum())
    assert split["entropy_bits"] == pytest.approx(entropy, abs=0.03)
    assert abs(split["history_bits"]) < 0.05
    # exploitable = the skew (log2 E - H) and nothing more, up to estimation noise
    assert split["exploitable_bits"] == pytest.approx(3.0 - entropy, abs=0.06)
    assert split["consecutive_mi_bits"] < 0.02


def test_a_temporal_rule_is_exploitable_but_not_history() -> None:
    # every token repeats the previous token's expert (per layer), new at each request start
    rng = np.random.default_rng(2)
    per_request = rng.integers(0, E, size=(50, 1, L, 1))
    ids = np.repeat(per_request, 80, axis=1).reshape(4000, L, 1)
    split = information_split(_trace(ids, 50)).summary()
    assert abs(split["history_bits"]) < 0.1
    assert split["exploitable_bits"] > 2.5


def test_needs_requests_to_hold_out_and_prints_the_published_row() -> None:
    ids = np.zeros((20, L, 1), np.int64)
    with pytest.raises(ConfigError, match="at least 3 requests"):
        information_split(_trace(ids, 2))
    split = information_split(_trace(np.random.default_rng(3).integers(0, E, (300, L, 1)),
                                     6)).summary()
    table = format_table([split])
    assert "split-test" in table and "Prophet (its models, published)" in table
    assert "| 4.11 |" in table and math.isfinite(split["history_bits"])
