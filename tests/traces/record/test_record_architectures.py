"""Every supported architecture: the recorded trace equals the model's own routing.

Each tiny random model records five prompts of different lengths in batches of three (left
padding, KV-cached decoding). Every request is then run again alone, without padding or cache,
with the test's own hooks on the router modules; experts, gates, lookahead and features must
match, and where the router is a plain top-k of its logits the experts must also match the
``output_router_logits`` of the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moe_offload_lab.traces.format import DECODE, NO_EXPERT, PREFILL, Trace
from moe_offload_lab.traces.record import RecordSettings, record_requests
from moe_offload_lab.traces.record.lookahead import FeatureProjection
from moe_offload_lab.traces.record.tiny import TINY_CONFIGS, build_tiny_model
from record_helpers import PROMPTS, reference_routing, sort_slots

NEW_TOKENS, LOOKAHEAD, FEATURES = 4, 2, 4

# Routers whose choice is a plain top-k of the logits (softmax is monotonic), so the experts can be
# checked against output_router_logits too. DeepSeek (bias, groups) and Phi (sparsemixer) cannot.
PLAIN_TOP_K = {"tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe", "tiny-gpt-oss",
               "tiny-granitemoe"}
EXPECTED_LAYERS = {"tiny-qwen2-moe": (0, 2, 2), "tiny-deepseek-v2": (1, 1, 3),
                   "tiny-deepseek-v3": (1, 1, 3), "tiny-glm4-moe": (1, 1, 3),
                   "tiny-ernie4_5-moe": (1, 1, 3)}  # first_k_dense, step, MoE layers


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def recorded(request, tmp_path_factory):
    model = build_tiny_model(request.param, seed=3)
    settings = RecordSettings(max_new_tokens=NEW_TOKENS, batch_size=3, lookahead=LOOKAHEAD,
                              features=FEATURES, feature_seed=5)
    recording = record_requests(model, PROMPTS, settings=settings, progress=False)
    path = tmp_path_factory.mktemp("arch") / f"{request.param}.parquet"
    recording.trace.save(path)
    return request.param, model, recording, path


def test_trace_round_trips_and_has_the_expected_shape(recorded):
    name, model, recording, path = recorded
    trace = Trace.load(path)
    spec = trace.spec
    assert spec.hf_architecture == type(model).__name__
    first, step, layers = EXPECTED_LAYERS.get(name, (0, 1, 4))
    assert (spec.first_k_dense, spec.moe_layer_step, spec.num_moe_layers) == (first, step, layers)
    assert (spec.num_experts, spec.top_k) == (8, 2)
    assert trace.lookahead_distances == [1, 2]
    assert trace.features.shape == (trace.num_tokens, layers, FEATURES)
    np.testing.assert_array_equal(trace.expert_ids, recording.trace.expert_ids)
    np.testing.assert_array_equal(trace.gate_weights, recording.trace.gate_weights)
    assert trace.provenance["source"] == "hf-recorder"
    assert trace.provenance["decode_tokens"] == int((trace.phase == DECODE).sum())


def test_rows_are_the_prompt_then_the_generated_tokens(recorded):
    _, _, recording, _ = recorded
    trace = recording.trace
    for r, prompt in enumerate(PROMPTS):
        rows = np.flatnonzero(trace.request_id == r)
        n_prompt = len(prompt.encode())
        assert rows.size == n_prompt + NEW_TOKENS == len(recording.tokens[r])
        np.testing.assert_array_equal(trace.position[rows], np.arange(rows.size))
        assert (trace.phase[rows[:n_prompt]] == PREFILL).all()
        assert (trace.phase[rows[n_prompt:]] == DECODE).all()
        assert recording.tokens[r][:n_prompt] == list(prompt.encode())
    # no padding rows: exactly the prompt and decode tokens
    assert trace.num_tokens == sum(len(p.encode()) for p in PROMPTS) + NEW_TOKENS * len(PROMPTS)


def test_experts_and_gates_match_the_routers_own_outputs(recorded):
    name, model, recording, _ = recorded
    trace = recording.trace
    for r, tokens in enumerate(recording.tokens):
        rows = np.flatnonzero(trace.request_id == r)
        _, ids, weights, logits, _ = reference_routing(model, tokens)
        got_ids, got_w = sort_slots(trace.expert_ids[rows].astype(np.int64),
                                    trace.gate_weights[rows])
        want_ids, want_w = sort_slots(ids.astype(np.int64), weights)
        np.testing.assert_array_equal(got_ids, want_ids, err_msg=f"{name} request {r}")
        np.testing.assert_allclose(got_w, want_w, rtol=1e-4, atol=1e-5)
        if name in PLAIN_TOP_K:
            assert logits is not None and len(logits) == trace.spec.num_moe_layers
            from_logits = np.stack([torch.topk(lg, trace.spec.top_k, dim=-1).indices.numpy()
                                    for lg in logits], axis=1)
            np.testing.assert_array_equal(np.sort(from_logits, -1), got_ids)


def test_lookahead_applies_the_later_router_to_the_earlier_state(recorded):
    name, model, recording, _ = recorded
    trace = recording.trace
    n_layers = trace.spec.num_moe_layers
    for r, tokens in enumerate(recording.tokens):
        rows = np.flatnonzero(trace.request_id == r)
        inputs, _, _, _, routers = reference_routing(model, tokens)
        for d in range(1, LOOKAHEAD + 1):
            ahead = trace.lookahead[d][rows]
            for layer in range(n_layers):
                if layer >= n_layers - d:
                    assert (ahead[:, layer] == NO_EXPERT).all()
                    continue
                with torch.no_grad():
                    want = routers[layer + d](inputs[layer])[2].numpy()
                np.testing.assert_array_equal(np.sort(ahead[:, layer], -1), np.sort(want, -1),
                                              err_msg=f"{name} request {r} d={d} l={layer}")


def test_features_project_the_moe_block_input(recorded):
    _, model, recording, _ = recorded
    trace = recording.trace
    matrix = FeatureProjection(trace.spec.hidden_size, FEATURES, 5).matrix
    assert trace.features.dtype == np.float16
    for r, tokens in enumerate(recording.tokens):
        rows = np.flatnonzero(trace.request_id == r)
        inputs, *_ = reference_routing(model, tokens)
        want = np.stack([(x.float() @ matrix).numpy() for x in inputs], axis=1)
        np.testing.assert_allclose(trace.features[rows].astype(np.float32), want,
                                   rtol=1e-2, atol=2e-3)
