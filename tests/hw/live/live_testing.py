"""Helpers of the live-mode tests: tiny models, prompts, the HF references, call recording."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from moe_offload_lab.hw.live import greedy_generate
from moe_offload_lab.hw.live.runner import encode_inputs
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.traces.record.tiny import build_tiny_model
from transformers.integrations.moe import ExpertsInterface, grouped_mm_experts_forward

ARCHS = ["mixtral", "qwen2-moe", "qwen3-moe", "olmoe", "deepseek-v2", "deepseek-v3", "gpt-oss"]
CAPACITY = 6  # slots of the tiny models' 16..32 routed experts: fetches and evictions happen
NEW_TOKENS = 4
# GPT-OSS: transformers dispatches its experts to another kernel (grouped_mm, transposed weights
# ``x @ W``) whose float32 rounding depends on the order of an expert's token rows; the executor
# gathers rows in token order, transformers in (top-k slot, token) order. Observed: <= 6e-8.
GPT_OSS_ATOL = 1e-6
# Left-padded prompts: the original model's experts also compute the pad rows routed to them, the
# executor only the real rows. MKL's float32 matmul of a 1-row (gemv) or 2-row input rounds
# differently from a taller one, so an expert whose real rows are 1 or 2 but which also gets pad
# rows rounds differently in the two models. Observed: <= 2e-7 (real positions only).
PADDED_ATOL = 1e-6
PADDED_LENGTHS = (7, 3, 5)  # unequal prompt lengths: 15 real tokens, 21 padded positions


def model(arch: str) -> Any:
    """A fresh tiny random model (seed 0: every build has the same weights)."""
    return build_tiny_model(f"tiny-{arch}", seed=0)


def prompt(batch: int = 2, length: int = 5) -> torch.Tensor:
    """A fixed batch of token ids [batch, length] of the 256-token vocabulary."""
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(7))


def padded_rows(lengths: tuple[int, ...] = PADDED_LENGTHS) -> list[list[int]]:
    """Fixed prompts of the given lengths (id lists of the 256-token vocabulary, no 0)."""
    g = torch.Generator().manual_seed(11)
    return [torch.randint(1, 256, (n,), generator=g).tolist() for n in lengths]


@cache
def padded_reference(arch: str, skip_pads: bool = False
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """``(tokens, logits, mask)`` of the original model on :func:`padded_rows`, left-padded with
    the attention mask and positions (:func:`greedy_generate`). ``skip_pads``: the model's routed
    experts compute the real rows only (transformers' own grouped kernel on them, pad rows
    zero), as the offloading executor does; routers and shared experts still see every row."""
    m = model(arch)
    ids, mask = encode_inputs(padded_rows(), m)
    if skip_pads:
        keep = mask.reshape(-1).nonzero().squeeze(1)
        SKIP_PADS.update(keep=keep, rows=mask.numel())
        ExpertsInterface.register("skip-pads", skip_pads_experts)
        m.set_experts_implementation("skip-pads")
    tokens, logits = greedy_generate(m, ids, NEW_TOKENS, attention_mask=mask)
    return tokens, tuple(logits), mask


SKIP_PADS: dict[str, Any] = {}


def skip_pads_experts(module: torch.nn.Module, hidden: torch.Tensor, index: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """transformers' grouped experts kernel on the real rows of a padded prefill only."""
    keep, rows = SKIP_PADS["keep"], SKIP_PADS["rows"]
    if hidden.shape[0] != rows:  # decode calls have no pads
        return grouped_mm_experts_forward(module, hidden, index, weights)
    out = grouped_mm_experts_forward(module, hidden[keep], index[keep], weights[keep])  # [t, H]
    return hidden.new_zeros(hidden.shape).index_copy_(0, keep, out)


def assert_real_logits_match(got: list[torch.Tensor], want: tuple[torch.Tensor, ...],
                             mask: torch.Tensor, atol: float = 0.0) -> None:
    """Logits equal at the real positions (the prefill's pads skipped): bitwise for atol 0."""
    assert len(got) == len(want)
    real = mask.bool()  # [B, S]
    for call, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == torch.float32 and a.shape == b.shape
        if call == 0:
            a, b = a[real], b[real]  # [t, V]
        if atol == 0.0:
            assert torch.equal(a, b), f"call {call}: max diff {(a - b).abs().max().item()}"
        else:
            torch.testing.assert_close(a, b, rtol=0.0, atol=atol)


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
