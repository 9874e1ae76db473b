"""Examples from traces and the split by request."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies.learned.data import build_examples, concat, split_by_request
from moe_offload_lab.traces.errors import ConfigError


def test_split_by_request_has_no_overlap_and_covers_all(planted) -> None:
    split = split_by_request(planted, 0.2, 0.2, seed=3)
    parts = [set(split.train_requests.tolist()), set(split.val_requests.tolist()),
             set(split.test_requests.tolist())]
    assert all(parts)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(np.unique(planted.request_id).tolist())
    rows = np.concatenate([split.train_rows, split.val_rows, split.test_rows])
    assert sorted(rows.tolist()) == list(range(planted.num_tokens))
    for part, ids in zip((split.train_rows, split.test_rows),
                         (split.train_requests, split.test_requests), strict=True):
        assert set(planted.request_id[part].tolist()) == set(ids.tolist())
    again = split_by_request(planted, 0.2, 0.2, seed=3)
    assert np.array_equal(again.test_requests, split.test_requests)


def test_split_needs_three_requests(planted) -> None:
    with pytest.raises(ConfigError, match="at least 3 requests"):
        split_by_request(planted.select(planted.request_id < 2))


def test_examples_shapes_padding_and_mask(planted) -> None:
    ex = build_examples(planted, np.arange(5), context=3, horizon=3)
    assert len(ex) == 5 * 4
    assert ex.history.shape == (20, 3, 2) and ex.targets.shape == (20, 3, 8)
    assert ex.features is not None and ex.features.shape == (20, 8)
    # token 0, layer 0: two padded slots then the layer-0 experts
    assert (ex.history[0, :2] == 8).all()
    assert sorted(ex.history[0, 2].tolist()) == sorted(planted.expert_ids[0, 0].tolist())
    # token 0, layer 3 sees layers 1..3
    assert np.array_equal(ex.history[3], planted.expert_ids[0, 1:4])
    # mask: l + d < L
    assert ex.mask[:4].tolist() == [[True, True, True], [True, True, False],
                                    [True, False, False], [False, False, False]]
    assert ex.targets[0, 0, planted.expert_ids[0, 1]].all() and ex.targets[0, 0].sum() == 2


def test_concat_keeps_request_ids_distinct(planted) -> None:
    both = concat([planted, planted])
    assert both.num_tokens == 2 * planted.num_tokens
    assert len(np.unique(both.request_id)) == 2 * len(np.unique(planted.request_id))
