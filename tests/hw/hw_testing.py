"""Shared helpers of the executor tests: a tiny spec and trace, and a policy that records calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from moe_offload_lab.policies.base import FetchPlan, Policy
from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.toy_traces import make_trace, toy_spec
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

CAPACITY = 6  # of 24 keys: fetches and evictions happen
# Experts placed on the CPU run on the executor's host threads, whose intra-op thread count is
# OpenMP's default, not the 1 the tests set on their own thread; MKL may then split a matmul's
# inner sum differently, so those runs match the all-resident one to within this, not bitwise
# (the same reason as tests/hw/live/live_testing.py's HOST_THREAD_ATOL).
HOST_THREAD_ATOL = 1e-6


def tiny_spec() -> ModelSpec:
    """3 MoE layers, 8 experts, top-2, hidden 32; fp32 bytes so the log's bytes match the spec."""
    return toy_spec(num_layers=3, num_experts=8, top_k=2).with_overrides(
        hidden_size=32, expert_intermediate_size=48, expert_bytes_per_param=4.0,
        num_attention_heads=4, num_kv_heads=2, head_dim=8)


@cache
def tiny_trace(tokens: int = 36, requests: int = 4, seed: int = 1,
               lookahead_error: float = 0.3) -> Trace:
    """A small trace with prompts and decode tokens, and lookahead columns."""
    return make_trace(tiny_spec(), tokens, requests=requests, seed=seed,
                      lookahead_error=lookahead_error, lookahead=(1, 2))


class RecordingPolicy(Policy):
    """Delegates every call to ``inner`` and records the calls and their answers in ``calls``."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.is_oracle = inner.is_oracle
        self.runtime = inner.runtime
        self.calls: list[tuple[Any, ...]] = []

    @property
    def decision_cost(self) -> DecisionCost:
        return self.inner.decision_cost

    def reset(self, spec: ModelSpec, capacity_slots: int, cost_model: CostModel,
              trace: Trace | None = None, schedule: Any = None) -> None:
        self.inner.reset(spec, capacity_slots, cost_model, trace=trace, schedule=schedule)
        self.partition_slots = self.inner.partition_slots
        self.lowbit_fraction = self.inner.lowbit_fraction  # what engines read after reset
        self.tiered_rule = self.inner.tiered_rule
        self.calls.clear()

    def begin_step(self, ctx: LayerContext) -> None:
        self.calls.append(("begin_step", ctx.step))
        self.inner.begin_step(ctx)

    def on_layer(self, ctx: LayerContext) -> None:
        self.calls.append(("on_layer", ctx.step, ctx.layer, tuple(ctx.keys)))
        self.inner.on_layer(ctx)

    def place(self, ctx: LayerContext, missing: Sequence[int]) -> Mapping[int, str]:
        where = self.inner.place(ctx, missing)
        self.calls.append(("place", ctx.step, ctx.layer, tuple(missing),
                           tuple(where[k] for k in missing)))
        return where

    def admit(self, key: int, ctx: LayerContext) -> bool:
        ok = self.inner.admit(key, ctx)
        self.calls.append(("admit", key, bool(ok)))
        return ok

    def evict(self, view: CacheView, need: int, layer: int = -1) -> Sequence[int]:
        victims = list(self.inner.evict(view, need, layer))
        self.calls.append(("evict", need, layer, tuple(victims), tuple(sorted(view.resident)),
                           tuple(sorted(view.in_flight))))
        return victims

    def prefetch(self, ctx: LayerContext) -> FetchPlan:
        plan = self.inner.prefetch(ctx)
        self.calls.append(("prefetch", ctx.step, ctx.layer, tuple(plan.keys), tuple(plan.cancel)))
        return plan

    def on_fetch_done(self, key: int) -> None:
        self.calls.append(("on_fetch_done", key))
        self.inner.on_fetch_done(key)

    def on_evict(self, key: int) -> None:
        self.calls.append(("on_evict", key))
        self.inner.on_evict(key)

    def end_step(self, ctx: LayerContext) -> None:
        self.calls.append(("end_step", ctx.step))
        self.inner.end_step(ctx)


def single_thread_torch():  # noqa: ANN201 - generator fixture body, wrapped by each module
    """Run tiny tensors on one intra-op thread (spinning OpenMP workers crawl on a busy 2-core
    machine); restores the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
