"""Live mode with prompts of different lengths: left padding, attention mask, positions, and pad
tokens kept away from the routers, the executor, the policies and the event log."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from live_testing import (
    CAPACITY,
    GPT_OSS_ATOL,
    NEW_TOKENS,
    PADDED_ATOL,
    PADDED_LENGTHS,
    CallLog,
    assert_real_logits_match,
    model,
    padded_reference,
    padded_rows,
    prompt,
)
from moe_offload_lab.hw.live import LiveRunner, greedy_generate, run_live
from moe_offload_lab.hw.live.runner import encode_inputs
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, PREFILL
from moe_offload_lab.traces.record.adapters import find_routers

REAL = sum(PADDED_LENGTHS)  # real prompt tokens of padded_rows()
TOP_K = 2  # every tiny config routes each token to 2 experts


def _expert_counts(events, step: int) -> dict[int, int]:  # noqa: ANN001 - a DataFrame
    """Tokens the executor computed per MoE layer in ``step`` (expert compute rows)."""
    ev = events[(events["kind"] == "compute") & (events["step"] == step) & (events["expert"] >= 0)]
    return {int(k): int(v) for k, v in ev.groupby("layer")["count"].sum().items()}


@pytest.mark.parametrize("policy", ["lru", "gate-lookahead", None])
@pytest.mark.parametrize("arch", ["mixtral", "qwen3-moe", "gpt-oss"])
def test_unequal_prompts_match_the_padded_original(arch: str, policy: str | None) -> None:
    """Logits at the real positions and greedy tokens equal the original model's on the same
    left-padded batch; the event log counts only real tokens."""
    tokens, logits, mask = padded_reference(arch)
    kwargs = {"resident_all": True} if policy is None else {"capacity_slots": CAPACITY}
    result = run_live(model(arch), padded_rows(), policy, max_new_tokens=NEW_TOKENS, check=True,
                      **kwargs)
    assert torch.equal(result.attention_mask, mask)
    assert result.input_ids.shape == (3, max(PADDED_LENGTHS))
    assert torch.equal(result.tokens, tokens)
    if arch == "gpt-oss":
        assert_real_logits_match(result.logits, logits, mask, atol=GPT_OSS_ATOL)
    else:
        assert_real_logits_match(result.logits, logits, mask, atol=PADDED_ATOL)
        # bitwise against the original blocks run on the real rows only (same expert row sets)
        _, exact, _ = padded_reference(arch, skip_pads=True)
        assert_real_logits_match(result.logits, exact, mask)
    # the executor saw the real tokens only: prefill REAL x top_k per MoE layer, decode B x k
    layers = len(find_routers(model(arch)).blocks)  # MoE layers
    assert _expert_counts(result.events, 0) == dict.fromkeys(range(layers), REAL * TOP_K)
    for step in range(1, NEW_TOKENS):
        assert _expert_counts(result.events, step) == dict.fromkeys(range(layers), 3 * TOP_K)
    steps = result.events[result.events["kind"] == "step"]
    assert steps["count"].tolist() == [REAL] + [3] * (NEW_TOKENS - 1)
    other = result.events[(result.events["kind"] == "compute")
                          & (result.events["detail"] == "other")]
    assert set(other[other["step"] == 0]["count"]) == {REAL}
    summary = result.summary
    assert summary["requests"] == 3 and summary["decode_steps"] == NEW_TOKENS - 1
    assert summary["prompt_tokens"] == max(PADDED_LENGTHS)
    assert summary["prompt_tokens_total"] == REAL
    if policy is not None:
        assert result.stats["fetches"] > 0 and result.stats["max_used_slots"] <= CAPACITY
    if policy == "gate-lookahead":
        assert result.stats["prefetches"] > 0


@pytest.mark.parametrize("arch", ["mixtral", "gpt-oss"])
def test_padded_reference_is_generate_and_each_prompt_alone(arch: str) -> None:
    """greedy_generate on left-padded prompts is transformers' generate (bitwise), and each
    prompt's tokens and logits are those of the prompt run alone without padding."""
    m = model(arch)
    tokens, logits, mask = padded_reference(arch)
    ids, _ = encode_inputs(padded_rows(), m)
    out = m.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                     output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences[:, ids.shape[1]:], tokens)
    assert all(torch.equal(a[:, -1], b) for a, b in zip(logits, out.logits, strict=True))
    for b, row in enumerate(padded_rows()):
        alone_tokens, alone = greedy_generate(m, torch.tensor([row]), NEW_TOKENS)
        assert torch.equal(alone_tokens[0], tokens[b])
        n = len(row)
        torch.testing.assert_close(alone[0][0], logits[0][b, -n:], rtol=0.0, atol=1e-5)
        for a, c in zip(alone[1:], logits[1:], strict=True):
            torch.testing.assert_close(a[0], c[b], rtol=0.0, atol=1e-5)


def test_policy_sees_real_tokens_and_requests() -> None:
    """begin_step gets the real token count; request ids and phases follow the real rows."""
    policy = CallLog(build_policy("lru"))
    m = model("qwen3-moe")
    ids, mask = encode_inputs(padded_rows(), m)
    runner = LiveRunner(m, policy, capacity_slots=CAPACITY)
    greedy_generate(m, ids, NEW_TOKENS, attention_mask=mask)
    runner.finish()
    runner.remove()
    begins = [c for c in policy.calls if c[0] == "begin_step"]
    assert begins[0] == ("begin_step", 0, REAL, (PREFILL,) * REAL)
    assert begins[1:] == [("begin_step", s, 3, (DECODE,) * 3) for s in range(1, NEW_TOKENS)]
    schedule, request_id, phase = runner.schedule_arrays()
    assert [len(r) for r in schedule] == [REAL] + [3] * (NEW_TOKENS - 1)
    want = np.concatenate([np.repeat([0, 1, 2], PADDED_LENGTHS)]
                          + [np.arange(3)] * (NEW_TOKENS - 1))
    assert request_id.tolist() == want.tolist()
    assert phase.tolist() == [PREFILL] * REAL + [DECODE] * (3 * (NEW_TOKENS - 1))


def test_equal_prompts_are_unpadded() -> None:
    """Equal lengths: an all-ones mask, no attention_mask passed (calls as before), B*S*k tokens
    in the prefill, and the same run from id lists as from a tensor."""
    ids = prompt()
    rows = ids.tolist()
    a = run_live("tiny-mixtral", ids, "lru", capacity_slots=CAPACITY)
    b = run_live("tiny-mixtral", rows, "lru", capacity_slots=CAPACITY)
    assert torch.equal(a.attention_mask, torch.ones_like(ids))
    assert torch.equal(a.tokens, b.tokens)
    assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits, strict=True))
    assert _expert_counts(a.events, 0) == dict.fromkeys(range(4), ids.numel() * TOP_K)
    cols = ["kind", "step", "layer", "expert", "bytes", "detail", "count"]
    assert a.events[cols].equals(b.events[cols])
    seen = []
    m = model("mixtral")
    hook = m.register_forward_pre_hook(lambda _m, _a, kw: seen.append(set(kw)), with_kwargs=True)
    greedy_generate(m, ids, 2, attention_mask=torch.ones_like(ids))
    hook.remove()
    assert all("attention_mask" not in kw and "position_ids" not in kw for kw in seen)


def test_pad_ids() -> None:
    """Pads are the config's pad_token_id (else 0), on the left."""
    from moe_offload_lab.traces.record.tiny import tiny_config_dict
    from transformers import AutoConfig

    values = tiny_config_dict("tiny-mixtral")
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, **{**values, "pad_token_id": 5})
    result = run_live(config, [[1, 2, 3], [4]], "lru", capacity_slots=CAPACITY,
                      max_new_tokens=1)
    assert result.input_ids.tolist() == [[1, 2, 3], [5, 5, 4]]
    assert result.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = encode_inputs([[1, 2, 3], [4]], model("mixtral"))  # tiny configs: pad id 0
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = encode_inputs(["abc", "d"], model("mixtral"))  # bytes
    assert ids.tolist() == [[97, 98, 99], [0, 0, 100]]


def test_checkpoint_tokenizer_pad_token(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    """String prompts of a checkpoint with a tokenizer are padded with its pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = ["the cat sat on the mat", "a dog"]
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(texts, trainers.WordLevelTrainer(
        special_tokens=["[UNK]", "</s>", "[PAD]"]))
    model("mixtral").save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="</s>")
    tok.save_pretrained(tmp_path)
    result = run_live(str(tmp_path), texts, "lru", capacity_slots=CAPACITY, max_new_tokens=2)
    pad = tok.pad_token_id
    assert pad == 2
    want = [tok(t)["input_ids"] for t in texts]
    assert result.input_ids.tolist() == [want[0], [pad] * 4 + want[1]]
    ids, mask = result.input_ids, result.attention_mask
    tokens, logits = greedy_generate(model("mixtral"), ids, 2, attention_mask=mask)
    assert torch.equal(result.tokens, tokens)
    assert_real_logits_match(result.logits, tuple(logits), mask, atol=PADDED_ATOL)
    assert _expert_counts(result.events, 0) == dict.fromkeys(range(4), 8 * TOP_K)


@pytest.mark.parametrize(("inputs", "message"), [
    ([[1, 2, 3], []], "empty prompt"),
    ([[]], "empty prompt"),
    (["abc", ""], "empty prompt"),
    ([], "inputs must be"),
    ([[1, 2, 3], [4, 256]], r"\[0, 256\)"),
    ([[1, 2, 3], [-1]], r"\[0, 256\)"),
    ([[1, 2], [3.5]], "integers"),
    (torch.zeros(2, 0, dtype=torch.long), "non-empty"),
    (torch.ones(1, 2, 3, dtype=torch.long), "non-empty"),
])
def test_bad_prompts_are_one_config_error(inputs: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_live("tiny-mixtral", inputs, "lru", capacity_slots=CAPACITY)


def test_bad_attention_mask() -> None:
    ids = prompt()
    with pytest.raises(ConfigError, match="does not match"):
        greedy_generate(model("mixtral"), ids, 1, attention_mask=torch.ones(2, 3))
    m = model("mixtral")
    runner = LiveRunner(m, "lru", capacity_slots=CAPACITY)
    mask = torch.ones_like(ids)
    mask[1] = 0  # a request with no token
    with pytest.raises(ConfigError, match="no real token"):
        greedy_generate(m, ids, 1, attention_mask=mask)
    runner.remove()
