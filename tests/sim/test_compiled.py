"""The compiled engine (:mod:`sim.compiled`) against the Python reference, row for row.

Every case runs the same engine twice, ``engine="python"`` and ``engine="compiled"``, and
compares the whole event frame exactly (floats to the bit), the folded step table and totals
(``log=steps|summary``, folded every 37 rows so prefetches are used after their rows were folded)
and the state a caller can read afterwards (the cache, the LRU order, the planner's wanted keys,
the protocol's counters, the link's clock and events). Traces carry noisy lookahead, so
predictions miss and prefetches are evicted unused or abandoned at the end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.replacement.tiers import TieredRule
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.compiled.eligibility import compiled_plan
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.eventlog import EventLog
from moe_offload_lab.sim.host import HostTier
from moe_offload_lab.sim.metrics import summarize
from moe_offload_lab.sim.system import SystemProfile, load_system
from moe_offload_lab.sim.workload import ContinuousBatcher
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import HW, spec

MODEL = spec(num_layers=4, num_experts=8, top_k=2)
CASES = {"batch1": {"batch": 1}, "static3": {"batch": 3}, "continuous": {"continuous": True}}


def _engine(name: str, mode: str, *, batch: int = 1, continuous: bool = False,
            slots: int = 6, system: str | None = None, log: str = "full", tokens: int = 90,
            hardware=HW, preload: bool = False, **kwargs) -> Engine:  # noqa: ANN001
    trace = make_trace(MODEL, tokens, requests=3, seed=5, lookahead=(1, 2),
                       lookahead_error=0.4)
    if system is not None:
        kwargs["system"] = load_system(system)
    if continuous:
        kwargs["batcher"] = ContinuousBatcher(trace, 3000.0, 3, chunk=4, seed=2)
    policy = kwargs.pop("policy", None) or build_policy(name)
    return Engine(MODEL, trace, policy, hardware, slots, batch=batch, log=log, engine=mode,
                  sample_rows=150, preload=preload, **kwargs)


def _state(engine: Engine) -> dict:
    protocol, policy = engine.protocol, engine.policy
    return {"resident": sorted(engine.cache.resident), "in_flight": sorted(engine.cache.in_flight),
            "used": len(engine.cache), "order": list(policy.replacement._order),
            "wanted": sorted(policy.planner.wanted), "unused": sorted(protocol.unused),
            "counters": [getattr(protocol, n) for n in (
                "n_miss", "n_inflight", "n_demand", "n_stream", "n_prefetch",
                "n_prefetch_used", "n_cancelled", "n_evicted")],
            "link": (engine.link.events, engine.link.env.now), "end_s": engine.end_s}


def _compare(name: str, **kwargs) -> pd.DataFrame:
    ref, fast = _engine(name, "python", **kwargs), _engine(name, "compiled", **kwargs)
    want, got = ref.run(), fast.run()
    assert ref.engine_used == "python" and fast.engine_used == "compiled"
    pd.testing.assert_frame_equal(got.events, want.events, check_exact=True)
    if want.step_table is not None:
        pd.testing.assert_frame_equal(got.step_table, want.step_table, check_exact=True)
        assert got.totals == want.totals
    else:
        assert summarize(got.events) == summarize(want.events)
    assert got.rows == want.rows and got.makespan_s == want.makespan_s
    assert _state(fast) == _state(ref)
    return want.events


@pytest.fixture(autouse=True)
def tiny_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EventLog, "fold_rows", 37)


@pytest.mark.parametrize("name", ["lru", "gate-lookahead"])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_engine_matches_the_python_engine(name: str, case: str) -> None:
    details = set()
    for system in (None, "roofline", "fused"):
        for slots in (4, 12):
            for log in ("full", "steps", "summary"):
                events = _compare(name, system=system, slots=slots, log=log, **CASES[case])
                details |= set(events["detail"].astype(str))
    assert {"hit", "miss", "demand"} <= details
    if name == "gate-lookahead":  # predictions hit, miss, land in flight and get abandoned
        assert {"prefetch_used", "prefetch", "inflight", "cancelled"} <= details
        assert case != "batch1" or "prefetch_hit" in details


@pytest.mark.parametrize("name", ["lru", "gate-lookahead"])
def test_streams_preload_and_pipelined_copies(name: str) -> None:
    # a cache of top_k slots with prefetches in flight forces streamed copies; a second copy
    # engine hides back-to-back latencies; a preloaded cache starts full
    two_engines = dataclasses.replace(HW, copy_engines=2)
    events = _compare(name, slots=2, batch=3)
    if name == "gate-lookahead":
        assert (events["detail"].astype(str) == "stream").any()
    _compare(name, slots=5, hardware=two_engines, system="fused")
    _compare(name, slots=12, preload=True, continuous=True)


@pytest.mark.parametrize("name", ["lru", "gate-lookahead"])
def test_host_dram_over_nvme(name: str) -> None:
    # host DRAM holds a few experts (an LRU); the others copy at NVMe speed and enter it
    for dram, case in ((5, {"batch": 1}), (12, {"continuous": True}), (0, {"batch": 3})):
        ref, fast = (_engine(name, mode, host=HostTier(dram, MODEL.num_expert_keys,
                                                       HW.link_bytes_per_s, 4e9), **case)
                     for mode in ("python", "compiled"))
        want, got = ref.run(), fast.run()
        pd.testing.assert_frame_equal(got.events, want.events, check_exact=True)
        assert fast.engine_used == "compiled" and _state(fast) == _state(ref)
        assert fast.host.nvme_reads == ref.host.nvme_reads > 0
        assert list(fast.host._dram) == list(ref.host._dram)


def test_other_planner_options_and_lookahead_absent() -> None:
    from moe_offload_lab.policies.composed import ComposedPolicy
    from moe_offload_lab.policies.config import PolicyConfig

    def composed(predictor: dict, planner: dict) -> ComposedPolicy:
        return ComposedPolicy(PolicyConfig(name="custom", predictor=predictor, planner=planner,
                                           replacement={"name": "lru"}))

    gate = {"name": "gate-lookahead"}
    for predictor, planner in ((gate, {"name": "next-layer", "n": 1}),
                               ({"name": "none"}, {"name": "next-layer"}),
                               (gate, {"name": "on-demand"})):
        for case in ({"batch": 3}, {"batch": 1}):
            _compare("custom", policy=composed(predictor, planner), **case)


def _ineligible() -> list[tuple[dict, str]]:
    ideal = SystemProfile.ideal()
    subclass = type("MyBatcher", (ContinuousBatcher,), {})
    return [
        ({"check": True}, "check=True"),
        ({"attrs": {"simpy_link": True}}, "SimPy"),
        ({"attrs": {"declared_fast_paths": False}}, "fast paths"),
        ({"attrs": {"defer_timeouts": False}}, "defer_timeouts"),
        ({"chunk_mb": 0.5}, "chunked"),
        ({"host": "ruled"}, "tiered rule"),
        ({"system": ideal.with_overrides(overlap_copies=False)}, "overlap"),
        ({"system": ideal.with_overrides(batched_copies=True)}, "batches"),
        ({"system": ideal.with_overrides(writeback_evicted=True)}, "writes evicted"),
        ({"system": ideal.with_overrides(staging_buffers=2)}, "staging"),
        ({"batcher": subclass}, "ContinuousBatcher"),
        ({"policy": "mixtral-offloading"}, "replacement"),
        ({"policy": "fiddler"}, "placement"),
        ({"policy": "subclass"}, "not a plain ComposedPolicy"),
        ({"policy": "component-patched"}, "has its on_access replaced"),
        ({"policy": "policy-patched"}, "evict is replaced"),
        ({"policy": "min-confidence"}, "min_confidence"),
        ({"policy": "cancel-stale"}, "cancel_stale"),
        ({"layers": 1}, "one MoE layer"),
        ({"no_numba": True}, "numba"),
        ({"subclass": True}, "an Engine subclass"),
    ]


class _Densities(TieredRule):
    """A tiered rule that ranks host-DRAM keys by key (the lowest leaves first)."""

    def tier_densities(self, keys):  # noqa: ANN001, ANN201
        return [float(key) for key in keys]


def _policy(which: str):  # noqa: ANN202
    from moe_offload_lab.policies.composed import ComposedPolicy
    from moe_offload_lab.policies.config import PolicyConfig

    if which == "subclass":
        return type("Mine", (ComposedPolicy,), {})(build_policy("lru").config)
    if which in ("min-confidence", "cancel-stale"):
        option = {"min_confidence": 0.5} if which == "min-confidence" else {"cancel_stale": True}
        return ComposedPolicy(PolicyConfig(name=which, predictor={"name": "gate-lookahead"},
                                           planner={"name": "next-layer", **option},
                                           replacement={"name": "lru"}))
    policy = build_policy("lru" if "patched" in which else which)
    if which == "component-patched":
        policy.replacement.on_access = lambda ctx: None
    if which == "policy-patched":
        policy.evict = lambda view, need, layer=-1: []
    return policy


@pytest.mark.parametrize("setup,reason", _ineligible(), ids=[r for _, r in _ineligible()])
def test_every_ineligibility_reason(setup: dict, reason: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = spec(num_layers=setup.get("layers", 4), num_experts=8, top_k=2)
    trace = make_trace(model, 20, requests=2, seed=1, lookahead=(1,))
    kwargs = {k: v for k, v in setup.items() if k in ("check", "chunk_mb", "system")}
    if "host" in setup:  # a host tier whose DRAM a tiered rule manages (Prophet's)
        kwargs["host"] = HostTier(8, model.num_expert_keys, 25e9, 5e9)
        kwargs["host"].bind_rule(_Densities(), model.expert_bytes)
    if "batcher" in setup:
        kwargs["batcher"] = setup["batcher"](trace, 3000.0, 2, chunk=4, seed=1)
    policy = _policy(setup["policy"]) if "policy" in setup else build_policy("lru")
    if setup.get("no_numba"):
        monkeypatch.setitem(__import__("sys").modules, "numba", None)
    cls = type("MyEngine", (Engine,), {}) if setup.get("subclass") else Engine
    engine = cls(model, trace, policy, HW, 8, batch=2, **kwargs)
    for name, value in setup.get("attrs", {}).items():
        setattr(engine, name, value)
    engine.run()  # auto: runs on Python and says why
    assert engine.engine_used == "python" and reason in engine.engine_reason
    policy.reset(model, 8, engine.compute.cost_model(), trace=trace)
    plan = compiled_plan(engine)
    assert isinstance(plan, str) and reason in plan
    strict = cls(model, trace, _policy(setup["policy"]) if "policy" in setup
                    else build_policy("lru"), HW, 8, batch=2, engine="compiled",
                    **{**kwargs, **({"batcher": setup["batcher"](trace, 3000.0, 2, chunk=4)}
                                    if "batcher" in setup else {})})
    for name, value in setup.get("attrs", {}).items():
        setattr(strict, name, value)
    with pytest.raises(ConfigError, match="engine=compiled"):
        strict.run()


def test_engine_switch_in_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from moe_offload_lab.sim.cli import main

    common = ["trace.tokens=60", "model=switch-base-8", "cache.fraction=0.5"]
    assert main([*common, "policy=gate-lookahead", f"out={tmp_path / 'a'}"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["engine"] == "compiled" and summary["engine_not_compiled"] == ""
    assert main([*common, "policy=gate-lookahead", "engine=python",
                 f"out={tmp_path / 'b'}"]) == 0
    python = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert python["engine"] == "python"
    same = {k: v for k, v in summary.items() if k not in ("engine", "sim_wall_s")}
    assert same == {k: v for k, v in python.items() if k not in ("engine", "sim_wall_s")}
    assert main([*common, "policy=fiddler", f"out={tmp_path / 'c'}"]) == 0
    fiddler = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert fiddler["engine"] == "python" and "placement" in fiddler["engine_not_compiled"]
    capsys.readouterr()
    assert main([*common, "policy=fiddler", "engine=compiled", f"out={tmp_path / 'd'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "engine=compiled" in err and "placement" in err
    assert not (tmp_path / "d" / "summary.json").exists()
    assert main([*common, "engine=fast", f"out={tmp_path / 'e'}"]) == 2
    assert "engine must be one of" in capsys.readouterr().err


def test_a_refused_plan_raises_as_in_python() -> None:
    # duplicate lookahead picks at batch 1 make a plan with a key twice: the same violation
    from moe_offload_lab.policies.protocol import PolicyViolation

    errors = []
    for mode in ("python", "compiled"):
        engine = _engine("gate-lookahead", mode, tokens=12)
        engine.trace.lookahead[1][:, :, :] = 3  # [T, L, k]: both picks expert 3
        with pytest.raises(PolicyViolation) as caught:
            engine.run()
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "planned twice" in errors[0]
    assert np.all(True)


def test_a_copy_landing_by_the_runs_end_lands_in_both_engines() -> None:
    """A prefetch still in flight after the last layer's decision but landing before the run's
    end lands (its slot resident, its row a completed copy) instead of being abandoned; the
    engines used to abandon first and then fail on the landing (KeyError)."""
    model = spec(num_layers=2, num_experts=4, top_k=2)
    trace = make_trace(model, 17, requests=1, seed=3, lookahead=(1, 2), lookahead_error=0.3)
    runs = {}
    for mode in ("python", "compiled"):
        engine = Engine(model, trace, build_policy("gate-lookahead"), HW, 6, engine=mode)
        runs[mode] = (engine.run(), engine)
    (want, ref), (got, fast) = runs["python"], runs["compiled"]
    pd.testing.assert_frame_equal(got.events, want.events, check_exact=True)
    assert sorted(fast.cache.resident) == sorted(ref.cache.resident)
    copies = want.events[want.events["kind"] == "copy"]
    last = copies[copies["end_s"] > copies["end_s"].max() - 1e-12]
    assert ref.link.env.now >= want.makespan_s
    assert not ref.cache.in_flight and len(ref.cache) <= 6
    assert (last["detail"] != "cancelled").any()  # the final copy landed, it was not abandoned
