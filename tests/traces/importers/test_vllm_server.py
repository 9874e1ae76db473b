"""vLLM OpenAI-server responses with routed experts, built as vLLM builds them.

Follows vllm-project/vllm ``vllm/entrypoints/openai/completion/serving.py``
(``request_output_to_completion_response``: ``routed_experts=numpy2base64(output.routed_experts)``
on each ``CompletionResponseChoice``, with ``prompt_token_ids``/``token_ids`` when
``return_token_ids``), ``vllm/entrypoints/openai/chat_completion/serving.py`` (the same field on
chat choices), ``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py`` (the array:
``[prompt + generated - 1, num_hidden_layers, top_k]`` uint16, zeros in dense blocks) and
``vllm/entrypoints/openai/run_batch.py`` with ``BatchRequestOutput`` of
``vllm/entrypoints/openai/batch/protocol.py`` (batch output lines ``{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}``).
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from moe_offload_lab.traces.errors import MoeLabError
from moe_offload_lab.traces.format import DECODE, PREFILL
from moe_offload_lab.traces.importers import import_trace


def numpy2base64(array: np.ndarray) -> str:
    """base64 of ``np.save`` bytes, as vLLM encodes ``routed_experts``."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode("utf-8")


def routed(spec, prompt, generated, seed):
    """What vLLM's capturer returns for one request: every block on the layer axis (the dense
    block 0 left at zero), ``prompt + generated - 1`` rows."""
    rng = np.random.default_rng(seed)
    rows = prompt + generated - 1
    out = np.zeros((rows, spec.num_layers, spec.top_k), np.uint16)  # [T, blocks, k]
    for block in spec.moe_layer_indices:
        out[:, block] = [rng.choice(spec.num_experts, spec.top_k, replace=False)
                         for _ in range(rows)]
    return out


def completion(choices, usage=None, chat=False):
    return {"id": "cmpl-1", "object": "chat.completion" if chat else "text_completion",
            "created": 1, "model": "m", "choices": choices,
            "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "system_fingerprint": None}


def choice(index, array, prompt=None, generated=None, chat=False):
    out = {"index": index, "finish_reason": "length", "stop_reason": None,
           "logprobs": None, "routed_experts": numpy2base64(array)}
    if chat:
        out["message"] = {"role": "assistant", "content": "x"}
    else:
        out["text"] = "x"
    if prompt is not None:
        out["prompt_token_ids"] = list(range(prompt))
    if generated is not None:
        out["token_ids"] = list(range(generated))
    return out


def check(trace, arrays, prompts, spec):
    moe = list(spec.moe_layer_indices)
    assert len(trace.request_ids()) == len(arrays)
    for r, (array, prompt) in enumerate(zip(arrays, prompts, strict=True)):
        rows = trace.request_id == r
        assert np.array_equal(trace.expert_ids[rows], array[:, moe])
        want = [PREFILL] * (prompt or len(array)) + [DECODE] * (len(array) - (prompt or
                                                                              len(array)))
        assert trace.phase[rows].tolist() == want


def test_json_completion_with_token_ids(tiny_spec, tmp_path):
    arrays = [routed(tiny_spec, 5, 3, 0), routed(tiny_spec, 2, 4, 1)]
    body = completion([choice(0, arrays[0], prompt=5, generated=3),
                       choice(1, arrays[1], prompt=2, generated=4)])
    path = tmp_path / "response.json"
    path.write_text(json.dumps(body))
    trace = import_trace("vllm", path, tiny_spec)
    check(trace, arrays, [5, 2], tiny_spec)
    assert trace.provenance["phase"] == "prompt lengths from: prompt_token_ids 2"
    assert trace.provenance["source"] == "vllm-server-import"


def test_jsonl_chat_responses_and_batch_output_lines(tiny_spec, tmp_path):
    arrays = [routed(tiny_spec, 6, 2, 2), routed(tiny_spec, 3, 3, 3), routed(tiny_spec, 4, 1, 4)]
    chat = completion([choice(0, arrays[0], chat=True)], chat=True,
                      usage={"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8})
    batch_line = {"id": "vllm-b1", "custom_id": "request-2",
                  "response": {"status_code": 200, "request_id": "r2",
                               "body": completion([choice(0, arrays[1], generated=3)])},
                  "error": None}
    listed = completion([choice(0, arrays[2], generated=1)])
    path = tmp_path / "responses.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in (chat, batch_line, listed)) + "\n\n")
    trace = import_trace("vllm", path, tiny_spec)
    check(trace, arrays, [6, 3, 4], tiny_spec)
    assert trace.provenance["phase"] == "prompt lengths from: token_ids 2, usage 1"


def test_unknown_prompt_lengths_mark_everything_prefill(tiny_spec, tmp_path):
    arrays = [routed(tiny_spec, 3, 2, 5), routed(tiny_spec, 3, 3, 6)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps([completion([choice(0, arrays[0]), choice(1, arrays[1])])]))
    trace = import_trace("vllm", path, tiny_spec)
    check(trace, arrays, [None, None], tiny_spec)
    assert trace.provenance["phase"] == "prompt lengths from: unknown 2"


def with_choice(tiny_spec, **fields):
    c = choice(0, routed(tiny_spec, 3, 2, 7), generated=2)
    c.update(fields)
    return completion([c])


@pytest.mark.parametrize("lines, match", [
    (lambda s: [with_choice(s, routed_experts=None)], "enable-return-routed-experts"),
    (lambda s: [with_choice(s, routed_experts="@@@")], "not base64 of np.save bytes"),
    (lambda s: [with_choice(s, routed_experts=base64.b64encode(b"hello").decode())],
     "not base64 of np.save bytes"),
    (lambda s: [with_choice(s, routed_experts=numpy2base64(np.zeros((4, 4, 3), np.uint16)))],
     "picks top_k=2"),
    (lambda s: [with_choice(s, token_ids=list(range(9)))], "the prompt has -4 tokens"),
    (lambda s: [{"response": {"status_code": 400, "body": None}}], "the batch request failed"),
    (lambda s: [{"id": "b", "custom_id": "r", "response": None, "error": "boom"}],
     "the batch request failed (boom)"),
    (lambda s: [{"choices": "none"}], "a response needs a 'choices' list"),
    (lambda s: ["{oops"], "malformed JSON"),
])
def test_bad_responses(lines, match, tiny_spec, tmp_path):
    path = tmp_path / "bad.jsonl"
    body = [json.dumps(v) if not isinstance(v, str) else v for v in lines(tiny_spec)]
    path.write_text("\n".join([json.dumps(with_choice(tiny_spec))] + body) + "\n")
    with pytest.raises(MoeLabError, match=re.escape(match)) as info:
        import_trace("vllm", path, tiny_spec)
    assert f"{path}:2" in str(info.value) and "\n" not in str(info.value)


def test_lengths_do_not_apply_to_responses(tiny_spec, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(with_choice(tiny_spec)))
    (tmp_path / "lengths.txt").write_text("4\n")
    with pytest.raises(MoeLabError, match="drop --lengths"):
        import_trace("vllm", path, tiny_spec, lengths=tmp_path / "lengths.txt")
