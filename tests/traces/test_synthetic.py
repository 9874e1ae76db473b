"""The synthetic generator: determinism, layout, the structure it promises, and config errors."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, NO_EXPERT, PREFILL
from moe_offload_lab.traces.synthetic import LengthDist, SynthConfig, generate, presets

SMALL = dict(
    prompt_tokens=LengthDist(kind="fixed", mean=12, min=1, max=64),
    decode_tokens=LengthDist(kind="fixed", mean=20, min=1, max=64),
)


def test_every_model_has_a_preset_that_generates_a_valid_trace(tmp_path):
    from moe_offload_lab.traces.bundled import BUNDLED
    from moe_offload_lab.traces.catalog import available

    # every catalog model but those of the bundled real traces (their routing is recorded)
    assert set(presets()) == set(available("model")) - set(BUNDLED)
    for name in presets():
        trace = generate(name, tokens=300, seed=3)
        trace.validate()
        assert trace.num_tokens == 300
        assert trace.spec.name == name
        assert trace.provenance["preset"] == name


def test_same_seed_same_trace_other_seed_other_trace():
    a = generate("mixtral-8x7b", requests=3, seed=7)
    b = generate("mixtral-8x7b", requests=3, seed=7)
    c = generate("mixtral-8x7b", requests=3, seed=8)
    for name in ("request_id", "position", "phase", "expert_ids", "gate_weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for d in a.lookahead:
        np.testing.assert_array_equal(a.lookahead[d], b.lookahead[d])
    assert a.expert_ids.shape != c.expert_ids.shape or (a.expert_ids != c.expert_ids).any()


def test_requests_are_prefill_then_decode_with_consecutive_positions():
    cfg = SynthConfig.preset("olmoe-1b-7b").with_overrides(**SMALL)
    trace = generate(cfg, requests=5, seed=0)
    assert trace.num_tokens == 5 * 32
    for rid in range(5):
        rows = trace.request_id == rid
        np.testing.assert_array_equal(trace.position[rows], np.arange(32))
        np.testing.assert_array_equal(trace.phase[rows], [PREFILL] * 12 + [DECODE] * 20)


def test_tokens_gives_exactly_that_many_tokens():
    for tokens in (1, 17, 5000):
        assert generate("phi-3.5-moe", tokens=tokens, seed=1).num_tokens == tokens


def test_gate_weights_are_a_distribution_sorted_like_the_ids():
    trace = generate("qwen3-30b-a3b", tokens=500, seed=2)
    np.testing.assert_allclose(trace.gate_weights.sum(axis=2), 1.0, rtol=1e-5)
    assert (np.diff(trace.gate_weights, axis=2) <= 1e-7).all()  # largest weight first


def test_lookahead_keeps_each_true_expert_at_the_configured_rate():
    trace = generate("mixtral-8x7b", tokens=30000, seed=4)
    target = trace.provenance["lookahead_accuracy_target"]
    k, n_layers = trace.spec.top_k, trace.spec.num_moe_layers
    for d, ahead in trace.lookahead.items():
        assert (ahead[:, n_layers - d :] == NO_EXPERT).all()
        for layer in range(d, n_layers):
            pred, true = ahead[:, layer - d], trace.expert_ids[:, layer]
            hits = (pred[:, :, None] == true[:, None, :]).any(axis=2).sum(axis=1) / k
            assert abs(hits.mean() - target[str(d)][layer]) < 0.02, (d, layer)
    # Accuracy falls with distance.
    means = [np.nanmean(np.array(target[str(d)], dtype=float)) for d in sorted(trace.lookahead)]
    assert means == sorted(means, reverse=True)


def test_mixtral_lookahead_target_is_the_published_per_layer_list():
    published = SynthConfig.preset("mixtral-8x7b").lookahead_accuracy
    assert len(published) == 31 and abs(np.mean(published) - 0.866) < 1e-3
    trace = generate("mixtral-8x7b", requests=1, seed=0)
    assert trace.provenance["lookahead_accuracy_target"]["1"][1:] == pytest.approx(published)


def test_skew_grows_with_depth_when_alpha_does():
    cfg = SynthConfig.preset("qwen1.5-moe-a2.7b")
    assert cfg.alpha_last > cfg.alpha_first
    trace = generate(cfg, tokens=8000, seed=5)
    n_experts = trace.spec.num_experts

    def entropy(layer: int) -> float:
        p = (
            np.bincount(trace.expert_ids[:, layer].ravel(), minlength=n_experts)
            / trace.expert_ids[:, layer].size
        )
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    assert entropy(trace.spec.num_moe_layers - 1) < entropy(0) - 0.3


def test_a_request_uses_a_subset_of_the_experts():
    cfg = SynthConfig.preset("deepseek-v2-lite").with_overrides(topic_strength=3.0, **SMALL)
    trace = generate(cfg, requests=40, seed=6)
    layer = 5
    overall = np.unique(trace.expert_ids[:, layer]).size
    per_request = [
        np.unique(trace.expert_ids[trace.request_id == r, layer]).size for r in range(40)
    ]
    assert np.mean(per_request) < 0.75 * overall


def test_temporal_strength_raises_adjacent_reuse():
    cfg = SynthConfig.preset("gpt-oss-20b")

    def adjacent_overlap(strength: float) -> float:
        trace = generate(cfg.with_overrides(reuse_strength=strength), tokens=4000, seed=9)
        ids = trace.expert_ids[:, 3]
        same = trace.request_id[1:] == trace.request_id[:-1]
        overlap = (ids[1:, :, None] == ids[:-1, None, :]).any(axis=2).sum(axis=1)
        return float(overlap[same].mean())

    assert adjacent_overlap(2.5) > adjacent_overlap(0.0) + 0.3


def test_bad_configs_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        SynthConfig.from_dict({"model": "mixtral-8x7b", "topics": {"colour": 1}})
    with pytest.raises(ConfigError, match="'model'"):
        SynthConfig.from_dict({"requests": 3})
    with pytest.raises(ConfigError, match="unknown trace"):
        SynthConfig.preset("no-such-model")
    with pytest.raises(ConfigError, match="not both"):
        generate("mixtral-8x7b", requests=2, tokens=10)
    with pytest.raises(ConfigError, match="31"):
        generate(
            SynthConfig.preset("mixtral-8x7b").with_overrides(lookahead_accuracy=(0.5, 0.6)),
            requests=1,
        )
    with pytest.raises(ConfigError, match="reuse|temporal"):
        SynthConfig(model="mixtral-8x7b", reuse_strength=-1.0)
    with pytest.raises(ConfigError, match="kind"):
        LengthDist(kind="poisson")


# ---- calibration targets (reference/routing-statistics.md), measured with traces.analysis ----
def test_mixtral_preset_meets_its_calibration_targets():
    from moe_offload_lab.traces.analysis.information import top1_cross_layer_mutual_information
    from moe_offload_lab.traces.analysis.locality import adjacent_reuse_ratio

    trace = generate("mixtral-8x7b", tokens=30000, seed=11)
    mi = top1_cross_layer_mutual_information(trace, 1)[1]
    assert 0.5 <= mi.mean() <= 0.75  # Prophet: about 0.62 bits between consecutive layers
    reuse = adjacent_reuse_ratio(trace)
    assert 1.7 <= np.nanmean(reuse) <= 2.3  # adjacent tokens reuse about 2x chance


def test_qwen3_preset_meets_its_calibration_targets():
    from moe_offload_lab.traces.analysis.locality import adjacent_reuse_ratio, experts_for_95pct

    trace = generate("qwen3-30b-a3b", tokens=20000, seed=12)
    assert 0.35 <= experts_for_95pct(trace).mean() <= 0.65  # 95% of traffic on about half
    # Adjacent tokens share experts at least 2x as often as uniform chance (k*k/E per pair) ...
    k, n_experts = trace.spec.top_k, trace.spec.num_experts
    ids, same = trace.expert_ids, trace.request_id[1:] == trace.request_id[:-1]
    overlap = (ids[1:, :, :, None] == ids[:-1, :, None, :]).any(axis=3).sum(axis=2)[same].mean()
    assert overlap >= 2 * k * k / n_experts
    # ... and clearly more than popularity alone explains (the ceiling at this skew is near 1.7).
    assert np.nanmean(adjacent_reuse_ratio(trace)) >= 1.4
