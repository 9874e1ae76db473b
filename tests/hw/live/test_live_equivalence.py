"""Live mode numerics: the offloading model's logits and tokens equal the original model's."""

from __future__ import annotations

import pytest
import torch
from live_testing import (
    ARCHS,
    CAPACITY,
    NEW_TOKENS,
    assert_logits_match,
    model,
    prompt,
    reference,
)
from moe_offload_lab.hw.live import run_live


@pytest.mark.parametrize("policy", ["lru", "gate-lookahead"])
@pytest.mark.parametrize("arch", ARCHS)
def test_live_equals_original(arch: str, policy: str) -> None:
    ref_tokens, ref_logits = reference(arch)
    result = run_live(model(arch), prompt(), policy, capacity_slots=CAPACITY,
                      max_new_tokens=NEW_TOKENS, check=True)
    assert_logits_match(arch, result.logits, ref_logits)
    assert torch.equal(result.tokens, ref_tokens)
    stats = result.stats
    assert stats["fetches"] > 0 and stats["evictions"] > 0
    assert stats["max_used_slots"] <= CAPACITY
    if policy == "gate-lookahead":
        assert stats["prefetches"] > 0
    copies = result.events[result.events["kind"] == "copy"]
    details = set(copies["detail"].astype(str))
    assert "demand" in details
    assert len(result.steps) == NEW_TOKENS  # a prefill and NEW_TOKENS - 1 decode calls
    assert result.summary["mode"] == "live" and result.summary["decode_steps"] == NEW_TOKENS - 1


@pytest.mark.parametrize("arch", ["mixtral", "deepseek-v3"])
def test_other_policies_and_in_flight_copies(arch: str) -> None:
    """History prefetching, host-placed experts (fiddler), all-resident, and a twin link that
    finishes no copy while a layer computes (prefetches in flight at the next layer)."""
    ref_tokens, ref_logits = reference(arch)
    runs = [
        run_live(model(arch), prompt(), "history", capacity_slots=CAPACITY, check=True),
        run_live(model(arch), prompt(), "fiddler", capacity_slots=CAPACITY, check=True),
        run_live(model(arch), prompt(), None, resident_all=True),
        run_live(model(arch), prompt(), "gate-lookahead", capacity_slots=CAPACITY,
                 twin_copies_per_layer=0, check=True),
    ]
    for result in runs:  # fiddler's host-placed experts run on host threads: a tolerance
        assert_logits_match(arch, result.logits, ref_logits,
                            host_threads=result.stats.get("cpu_experts", 0) > 0)
        assert torch.equal(result.tokens, ref_tokens)
    assert runs[0].stats["prefetches"] > 0
    assert runs[1].stats["cpu_experts"] > 0
    assert runs[2].stats["fetches"] == 0


def test_batch_of_one_and_model_restored() -> None:
    """One request; the model object gets its original blocks back after the run."""
    m = model("qwen2-moe")
    before = [type(layer.mlp).__name__ for layer in m.model.layers]
    result = run_live(m, prompt(batch=1), "lru", capacity_slots=CAPACITY)
    tokens, logits = reference("qwen2-moe", batch=1)
    assert_logits_match("qwen2-moe", result.logits, logits)
    assert torch.equal(result.tokens, tokens)
    assert [type(layer.mlp).__name__ for layer in m.model.layers] == before
