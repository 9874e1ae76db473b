"""Live mode framing: policy call order per forward call, event log, and bad input."""

from __future__ import annotations

import pytest
import torch
from live_testing import (
    CAPACITY,
    NEW_TOKENS,
    CallLog,
    assert_logits_match,
    model,
    prompt,
    reference,
)
from moe_offload_lab.hw.live import LiveRunner, greedy_generate, interface, run_live
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, PREFILL


def test_one_step_per_forward_call_in_replay_order() -> None:
    """begin_step before the first MoE layer, on_layer per MoE layer in order, end_step after."""
    policy = CallLog(build_policy("lru"))
    m = model("deepseek-v2")  # block 0 is dense: MoE layers 0..2 are blocks 1..3
    runner = LiveRunner(m, policy, capacity_slots=CAPACITY)
    greedy_generate(m, prompt(), NEW_TOKENS)
    events = runner.finish()
    runner.remove()
    n_layers = runner.spec.num_moe_layers
    expected = []
    for step in range(NEW_TOKENS):
        tokens, phase = (10, PREFILL) if step == 0 else (2, DECODE)
        expected.append(("begin_step", step, tokens, (phase,) * tokens))
        expected += [("on_layer", step, layer) for layer in range(n_layers)]
        expected.append(("end_step", step))
    assert policy.calls == expected
    kinds = set(events["kind"].astype(str))
    assert {"copy", "compute", "policy", "step"} <= kinds
    other = events[(events["kind"] == "compute") & (events["detail"] == "other")]
    assert len(other) == NEW_TOKENS * n_layers


def test_summary_and_log_counts() -> None:
    result = run_live("tiny-olmoe", prompt(), "lru", capacity_slots=CAPACITY)
    summary = result.summary
    assert summary["model"] == "tiny-olmoe" and summary["policy"] == "lru"
    assert summary["capacity_slots"] == CAPACITY and summary["requests"] == 2
    copies = result.events[result.events["kind"] == "copy"]
    assert len(copies) == result.stats["fetches"] + result.stats["streams"]
    assert result.tokens.shape == (2, NEW_TOKENS)
    assert result.logits[0].shape == (2, 5, 256)


@pytest.mark.parametrize(("source", "kwargs", "message"), [
    ("no/such/model/folder", {"capacity_slots": 4}, "does not exist"),
    ("tiny-mixtral", {"capacity_slots": 1}, "top-k"),
    ("tiny-mixtral", {"gpu_memory_gb": 1e-6}, "one layer needs"),
    ("tiny-mixtral", {"capacity_slots": 999}, "exceeds"),
    ("tiny-mixtral", {}, "exactly one"),
])
def test_bad_input_is_one_config_error(source: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_live(source, prompt(), "lru", **kwargs)


@pytest.mark.parametrize("arch", ["phimoe", "granitemoe", "glm4-moe", "ernie4_5-moe"])
def test_architectures_beyond_the_first_seven_equal_the_original(arch: str) -> None:
    """Any model whose experts use transformers' experts interface runs live: Phi-3.5-MoE's
    sparsemixer and Granite's router, GLM-4-MoE's and Ernie-4.5's shared experts next to the
    routed ones, all in the model's own block code."""
    ref_tokens, ref_logits = reference(arch)
    result = run_live(model(arch), prompt(), "gate-lookahead", capacity_slots=CAPACITY,
                      max_new_tokens=NEW_TOKENS, check=True)
    assert_logits_match(arch, result.logits, ref_logits)
    assert torch.equal(result.tokens, ref_tokens)
    assert result.stats["fetches"] > 0 and result.stats["prefetches"] > 0


def test_the_model_gets_its_experts_implementation_back() -> None:
    m = model("qwen2-moe")
    before = m.get_experts_implementation()
    runner = LiveRunner(m, "lru", capacity_slots=CAPACITY)
    assert set(m.get_experts_implementation().values()) == {interface.NAME}
    greedy_generate(m, prompt(), 2)
    runner.finish()
    runner.remove()
    assert m.get_experts_implementation() == before
    tokens, logits = greedy_generate(m, prompt(), NEW_TOKENS)  # the original model again
    ref_tokens, ref_logits = reference("qwen2-moe")
    assert torch.equal(tokens, ref_tokens)
    assert all(torch.equal(a, b) for a, b in zip(logits, ref_logits, strict=True))


def test_experts_outside_the_interface_are_one_config_error() -> None:
    """Custom or quantized experts modules that transformers' interface does not drive."""

    class PlainExperts(torch.nn.Module):
        def forward(self, hidden, index, weights):  # noqa: ANN001, ANN202
            return hidden

    m = model("mixtral")
    m.model.layers[2].mlp.experts = PlainExperts()
    with pytest.raises(ConfigError, match="no experts module using transformers' experts "
                                          "interface"):
        run_live(m, prompt(), "lru", capacity_slots=CAPACITY)


def test_non_moe_model_is_a_config_error() -> None:
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", vocab_size=256, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=48)
    with pytest.raises(ConfigError, match="not a Mixture-of-Experts config"):
        run_live(config, prompt(), "lru", capacity_slots=4)


@pytest.mark.parametrize(("policy", "inputs", "message"), [
    ("oracle-prefetch", None, "oracle"),
    ("no-such-policy", None, "no-such-policy"),
    ("lru", [[1, 2, 3], []], "empty prompt"),
    ("lru", [[1, 2, 999]], r"\[0, 256\)"),
])
def test_bad_policy_or_inputs(policy: str, inputs: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_live("tiny-mixtral", prompt() if inputs is None else inputs, policy,
                 capacity_slots=4)


def test_checkpoint_folder(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    """A local checkpoint folder loads (float32) and matches the original model."""
    model("olmoe").save_pretrained(tmp_path)
    result = run_live(str(tmp_path), prompt(), "lru", capacity_slots=CAPACITY)
    tokens, logits = greedy_generate(model("olmoe"), prompt(), NEW_TOKENS)
    assert torch.equal(result.tokens, tokens)
    assert all(torch.equal(a, b) for a, b in zip(result.logits, logits, strict=True))
