"""The engine's fast paths give the reference path's results to the bit (issue 19).

The reference is the engine on the SimPy-driven :class:`~sim.link.Link` (``simpy_link``) with
every policy call made (``declared_fast_paths`` off). The fast engine serves copies on the
:class:`~sim.link.DirectLink` (one pending event kept in two attributes, no SimPy) and skips the
``prefetch`` call on quiet layers and the ``place``/``admit`` calls of a policy that declares
them needless. Both must produce the same event
log row for row (every column, floats compared exactly) and so the same summary, across policy
families, static and continuous batching, chunked copies and runtime profiles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.link import DirectLink, Link
from moe_offload_lab.sim.metrics import summarize
from moe_offload_lab.sim.system import load_system
from moe_offload_lab.sim.workload import ContinuousBatcher
from sim_testing import HW, spec

# lru and mixtral-offloading never prefetch (the quiet fast path applies); gate-lookahead and
# oracle-belady prefetch; freq-distance is a composed, learning-free rule with a planner
POLICIES = ["lru", "gate-lookahead", "mixtral-offloading", "oracle-belady", "freq-distance"]


def _run(name: str, reference: bool, *, continuous: bool = False, chunk_mb: float = 0,
         system: str | None = None, batch: int = 2, error: float = 0.0
         ) -> tuple[pd.DataFrame, Engine]:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = make_trace(model, 160, requests=5, seed=3, lookahead=(1, 2, 3),
                       lookahead_error=error)
    kwargs: dict = {"chunk_mb": chunk_mb}
    if system is not None:
        kwargs["system"] = load_system(system)
    if continuous:
        kwargs["batcher"] = ContinuousBatcher(trace, 2000.0, 3, chunk=8, seed=1)
    engine = Engine(model, trace, build_policy(name), HW, 12, batch=batch, **kwargs)
    engine.simpy_link = reference
    engine.declared_fast_paths = not reference
    return engine.run().events, engine


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b) and len(a) > 0
    for col in a.columns:  # exact: the same float operations in the same order
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("case", ["static", "continuous", "chunked", "batch1"])
def test_fast_engine_matches_the_reference(name: str, case: str) -> None:
    if case == "continuous" and name.startswith("oracle"):
        pytest.skip("oracles need the schedule in advance; continuous batching makes it live")
    kwargs = {"static": {}, "continuous": {"continuous": True}, "chunked": {"chunk_mb": 1.5},
              "batch1": {"batch": 1}}[case]
    fast, engine = _run(name, reference=False, **kwargs)
    ref, ref_engine = _run(name, reference=True, **kwargs)
    assert isinstance(engine.link, DirectLink) and type(ref_engine.link) is Link
    _same(fast, ref)
    assert summarize(fast) == summarize(ref)


@pytest.mark.parametrize("system", ["mixtral-offloading", "hf-accelerate", "cuda-graph",
                                    "moe-infinity"])
def test_fast_engine_matches_the_reference_under_runtime_profiles(system: str) -> None:
    # batched demand copies, serial (pageable) copies, compute while copying, CPU experts
    for name in ("lru", "gate-lookahead"):
        fast, _ = _run(name, reference=False, system=system)
        ref, _ = _run(name, reference=True, system=system)
        _same(fast, ref)


@pytest.mark.parametrize("chunk_mb", [0, 0.7])
def test_cancellations_take_the_same_path(chunk_mb: float) -> None:
    # planners that cancel stale prefetches (ProMoE-style), on noisy lookahead, with and
    # without chunked copies (a running prefetch is stopped mid-copy or suspended)
    for name in ("lookahead-budgeted", "cost-aware"):
        fast, engine = _run(name, reference=False, chunk_mb=chunk_mb, error=0.5)
        ref, _ = _run(name, reference=True, chunk_mb=chunk_mb, error=0.5)
        _same(fast, ref)
        assert (fast["detail"].astype(str) == "cancelled").any()
        assert engine.link.events > 0


def test_quiet_fast_path_skips_only_declared_policies() -> None:
    lru, gate = build_policy("lru"), build_policy("gate-lookahead")
    model = spec()
    from moe_offload_lab.sim.compute import ComputeModel

    cost = ComputeModel(model, HW).cost_model()
    lru.reset(model, 12, cost)
    gate.reset(model, 12, cost)
    assert lru.quiet_no_prefetch and lru.gpu_admit_all
    assert not gate.quiet_no_prefetch and gate.gpu_admit_all
    fiddler = build_policy("fiddler")
    fiddler.reset(model, 12, cost)
    assert not fiddler.gpu_admit_all


def test_a_forwarding_wrapper_does_not_inherit_declarations() -> None:
    from moe_offload_lab.policies.protocol import declared

    class Wrapper:  # overrides place, forwards the rest (as tests' rogue policies do)
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner = inner

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.inner, name)

    lru = build_policy("lru")
    from moe_offload_lab.sim.compute import ComputeModel

    lru.reset(spec(), 12, ComputeModel(spec(), HW).cost_model())
    assert declared(lru, "gpu_admit_all") and declared(lru, "quiet_no_prefetch")
    wrapped = Wrapper(lru)
    assert wrapped.gpu_admit_all  # forwarded, yet not the wrapper's own declaration
    assert not declared(wrapped, "gpu_admit_all")
    assert not declared(wrapped, "quiet_no_prefetch")
