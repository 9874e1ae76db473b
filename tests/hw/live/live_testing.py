"""Helpers of the live-mode tests: tiny models, a prompt, the HF reference, call recording."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from hw.live import greedy_generate
from policies.base import Policy
from traces.record.tiny import build_tiny_model

ARCHS = ["mixtral", "qwen2-moe", "qwen3-moe", "olmoe", "deepseek-v2", "deepseek-v3", "gpt-oss"]
CAPACITY = 6  # slots of the tiny models' 16..32 routed experts: fetches and evictions happen
NEW_TOKENS = 4
# GPT-OSS: transformers dispatches its experts to another kernel (grouped_mm, transposed weights
# ``x @ W``) whose float32 rounding depends on the order of an expert's token rows; the executor
# gathers rows in token order, transformers in (top-k slot, token) order. Observed: <= 6e-8.
GPT_OSS_ATOL = 1e-6


def model(arch: str) -> Any:
    """A fresh tiny random model (seed 0: every build has the same weights)."""
    return build_tiny_model(f"tiny-{arch}", seed=0)


def prompt(batch: int = 2, length: int = 5) -> torch.Tensor:
    """A fixed batch of token ids [batch, length] of the 256-token vocabulary."""
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(7))


@cache
def reference(arch: str, batch: int = 2) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The original model's greedy tokens and per-forward logits."""
    tokens, logits = greedy_generate(model(arch), prompt(batch), NEW_TOKENS)
    return tokens, tuple(logits)


def assert_logits_match(arch: str, got: list[torch.Tensor], want: tuple[torch.Tensor, ...]
                        ) -> None:
    """Bitwise for the SwiGLU family, within GPT_OSS_ATOL for GPT-OSS (see above)."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape
        if arch == "gpt-oss":
            torch.testing.assert_close(a, b, rtol=0.0, atol=GPT_OSS_ATOL)
        else:
            assert torch.equal(a, b), f"{arch}: max diff {(a - b).abs().max().item()}"


class CallLog(Policy):
    """Delegates to ``inner``; records the step and layer calls in ``calls``."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name, self.is_oracle = inner.name, inner.is_oracle
        self.calls: list[tuple[Any, ...]] = []

    @property
    def decision_cost(self) -> Any:
        return self.inner.decision_cost

    def reset(self, spec: Any, capacity_slots: int, cost_model: Any, trace: Any = None,
              schedule: Any = None) -> None:
        self.inner.reset(spec, capacity_slots, cost_model, trace=trace, schedule=schedule)
        self.partition_slots = self.inner.partition_slots

    def begin_step(self, ctx: Any) -> None:
        self.calls.append(("begin_step", ctx.step, ctx.num_tokens, tuple(ctx.phase.tolist())))
        self.inner.begin_step(ctx)

    def on_layer(self, ctx: Any) -> None:
        self.calls.append(("on_layer", ctx.step, ctx.layer))
        self.inner.on_layer(ctx)

    def end_step(self, ctx: Any) -> None:
        self.calls.append(("end_step", ctx.step))
        self.inner.end_step(ctx)

    def on_fetch_done(self, key: int) -> None:
        self.inner.on_fetch_done(key)

    def place(self, ctx: Any, missing: Any) -> Any:
        return self.inner.place(ctx, missing)

    def admit(self, key: int, ctx: Any) -> bool:
        return self.inner.admit(key, ctx)

    def evict(self, cache: Any, need: int, layer: int = -1) -> Any:
        return self.inner.evict(cache, need, layer)

    def on_evict(self, key: int) -> None:
        self.inner.on_evict(key)

    def prefetch(self, ctx: Any) -> Any:
        return self.inner.prefetch(ctx)

    def __getattr__(self, name: str) -> Any:  # anything else the executor reads
        return getattr(self.__dict__["inner"], name)
