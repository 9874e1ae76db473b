"""Batch-aware deduplication: one demand per (distance, expert), confidence aggregated."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies.predictors.dedup import (
    deduplicate,
    tokens_from_union,
    union_scores,
)


def test_hand_worked_batch_of_three() -> None:
    # three tokens, one distance, four experts: expert 1 is wanted by every token
    p = np.array([[[0.9, 0.5, 0.0, 0.1]],
                  [[0.0, 0.5, 0.2, 0.1]],
                  [[0.0, 0.5, 0.0, 0.1]]])  # [B=3, d=1, E=4]
    demand = deduplicate(p, "noisy-or", min_score=0.1)
    # noisy-or: 1 - prod(1 - p)
    np.testing.assert_allclose(demand.scores[0], [0.9, 1 - 0.5**3, 0.2, 1 - 0.9**3])
    np.testing.assert_allclose(demand.tokens[0], [0.9, 1.5, 0.2, 0.3])
    # 8 token-level candidates >= 0.1 (0.9, 0.5 x3, 0.2, 0.1 x3; the zeros drop) ...
    assert demand.token_candidates == 8
    # ... become 4 unique experts: 4 copies instead of 8
    assert demand.unique_candidates == 4 and demand.saved == 4
    np.testing.assert_allclose(union_scores(p, "max")[0], [0.9, 0.5, 0.2, 0.1])


def test_one_token_is_its_own_demand_and_tokens_invert_the_union() -> None:
    p = np.array([[[0.3, 0.7]]])
    np.testing.assert_allclose(union_scores(p), [[0.3, 0.7]])
    # B i.i.d. tokens each with q: union 1 - (1 - q)^B, expected tokens B q
    q, batch = 0.2, 8
    assert tokens_from_union(1 - (1 - q) ** batch, batch) == pytest.approx(batch * q)
    assert tokens_from_union(0.4, 1) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="union"):
        union_scores(p, "sum")


def test_the_learned_runner_uses_the_step() -> None:
    torch = pytest.importorskip("torch")
    from moe_offload_lab.policies.learned.models import Shape, build_model
    from moe_offload_lab.policies.learned.runner import Runner
    from moe_offload_lab.policies.prediction import Prediction

    torch.manual_seed(0)
    model = build_model("logreg", Shape(4, 8, 2, 2, 2, 0))
    runner = Runner(model, min_score=0.0)
    history = np.random.default_rng(0).integers(0, 8, size=(5, 2, 2)).astype(np.int64)
    pred = Prediction(2, 4, 8)
    pred.begin(0, 0)
    runner.predict(pred, 0, history, None, 2)
    per_token = runner.probs(0, history, None).numpy()  # [5, 2, 8]
    expected = union_scores(per_token)
    for i in range(2):
        np.testing.assert_allclose(pred.confidence[i], np.sort(expected[i])[::-1], rtol=1e-5)
        assert sorted(pred.ranked[i]) == list(range(8))  # each expert once
    assert runner.last_demand.token_candidates == 5 * 2 * 8
    assert runner.last_demand.unique_candidates == 2 * 8
