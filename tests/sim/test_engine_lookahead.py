"""The engine builds only the lookahead columns a policy reads (``Policy.lookahead_distances``)
and gives the policy exactly the trace's columns for them."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies.composed import ComposedPolicy
from moe_offload_lab.policies.config import load_policy_config
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.engine import Engine
from sim_testing import HW, spec


class _Recorder(ComposedPolicy):
    """A composed policy that records the lookahead it is shown at each prefetch call."""

    def reset(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().reset(*args, **kwargs)
        self.seen: list[dict[int, np.ndarray]] = []

    def prefetch(self, ctx):  # noqa: ANN001, ANN201
        self.seen.append({d: picks.copy() for d, picks in ctx.lookahead.items()})
        return super().prefetch(ctx)


@pytest.mark.parametrize("name, declared, expected", [
    ("gate-lookahead", "policy", {1}),  # horizon 1: only distance 1 is built
    ("lru", "policy", set()),  # no predictor reads lookahead: nothing is built
    ("lru", None, {1, 2}),  # a policy that declares nothing sees every column
])
def test_lookahead_columns_follow_the_policy(name: str, declared: str | None,
                                             expected: set[int]) -> None:
    model = spec(num_layers=3)
    trace = make_trace(model, 40, requests=2, seed=1, lookahead=(1, 2))
    policy = _Recorder(load_policy_config(name))
    if declared is None:
        policy.reset = _with_all_distances(policy.reset, policy)
    engine = Engine(model, trace, policy, HW, 8, batch=2)
    engine.run()
    assert policy.seen and all(set(seen) == expected for seen in policy.seen)
    # the columns are the trace's own, for the step's rows at the current layer
    n_layers = model.num_moe_layers
    for i, seen in enumerate(policy.seen):
        step, layer = divmod(i, n_layers)
        rows = engine.schedule[step]
        for d, picks in seen.items():
            assert np.array_equal(picks, trace.lookahead[d][rows, layer])


def _with_all_distances(reset, policy: ComposedPolicy):  # noqa: ANN001, ANN202
    def wrapped(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        reset(*args, **kwargs)
        policy.lookahead_distances = None
    return wrapped
