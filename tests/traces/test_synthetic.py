"""The hidden-state generator: determinism, layout, one consistent model behind routing,
lookahead and features, the structure its knobs promise, and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from moe_offload_lab.traces.analysis.entropy import expert_counts
from moe_offload_lab.traces.analysis.profile import overlap_ratio, routing_profile
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, NO_EXPERT, PREFILL
from moe_offload_lab.traces.synth.kernels import route_states
from moe_offload_lab.traces.synth.structure import build_structure
from moe_offload_lab.traces.synthetic import LengthDist, SynthConfig, generate, presets

SMALL = dict(
    prompt_tokens=LengthDist(kind="fixed", mean=12, min=1, max=64),
    decode_tokens=LengthDist(kind="fixed", mean=20, min=1, max=64),
)


def test_every_model_but_the_recorded_one_has_a_preset_that_generates_a_valid_trace():
    from moe_offload_lab.traces.catalog import available

    # tiny-moe-stdlib exists only as a recording; flame-moe-290m has a preset fitted to its own
    assert set(presets()) == set(available("model")) - {"tiny-moe-stdlib"}
    for name in presets():
        trace = generate(name, tokens=120, seed=3)
        trace.validate()
        assert trace.num_tokens == 120
        assert trace.spec.name == name
        assert trace.provenance["preset"] == name
        assert trace.features is not None and trace.features.dtype == np.float16


def test_same_seed_same_trace_other_seed_other_trace():
    a = generate("mixtral-8x7b", requests=3, seed=7)
    b = generate("mixtral-8x7b", requests=3, seed=7)
    c = generate("mixtral-8x7b", requests=3, seed=8)
    for name in ("request_id", "position", "phase", "expert_ids", "gate_weights", "features"):
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


def test_gates_are_sorted_like_the_ids_and_normalised_as_configured():
    trace = generate("qwen3-30b-a3b", tokens=300, seed=2)
    np.testing.assert_allclose(trace.gate_weights.sum(axis=2), 1.0, rtol=1e-5)
    assert (np.diff(trace.gate_weights, axis=2) <= 1e-7).all()  # largest weight first
    shares = generate(SynthConfig.preset("qwen3-30b-a3b").with_overrides(gates="all"),
                      tokens=300, seed=2).gate_weights
    assert (shares.sum(axis=2) < 1.0).all()  # shares of a softmax over all 128 experts


def _frozen(name: str, **changes) -> SynthConfig:
    """A preset whose state never changes across layers and whose routers have no noise."""
    return SynthConfig.preset(name).with_overrides(layer_persistence=(1.0,), router_noise=(0.0,),
                                                   **changes)


def test_lookahead_is_the_later_router_applied_to_the_earlier_state():
    # With the state frozen across layers and no router noise, the router of layer l + d
    # applied to layer l's state is exactly what layer l + d routes to.
    trace = generate(_frozen("olmoe-1b-7b"), tokens=200, seed=4)
    n_layers = trace.spec.num_moe_layers
    for d, ahead in trace.lookahead.items():
        np.testing.assert_array_equal(ahead[:, : n_layers - d], trace.expert_ids[:, d:])
        assert (ahead[:, n_layers - d:] == NO_EXPERT).all()


def test_routing_is_the_router_applied_to_the_state_the_features_show():
    cfg = _frozen("deepseek-v2-lite")  # features.width == state.dim: the whole state
    trace = generate(cfg, tokens=150, seed=5)
    structure = build_structure(cfg, trace.spec)
    assert trace.features.shape[2] == cfg.state_dim
    for layer in (0, 7, 25):
        states = trace.features[:, layer].astype(np.float64)  # float16: tiny rounding
        again = route_states(states, structure.router[layer], structure.bias[layer], 0.0,
                             np.zeros((trace.num_tokens, trace.spec.num_experts)),
                             trace.spec.top_k)
        same = (np.sort(again, axis=1) == np.sort(trace.expert_ids[:, layer], axis=1)).all(1)
        assert same.mean() > 0.97, layer


def test_feature_width_and_switching_features_off():
    assert generate("mixtral-8x7b", tokens=50, seed=0, features=0).features is None
    assert generate("mixtral-8x7b", tokens=50, seed=0, features=4).features.shape == (50, 32, 4)
    with pytest.raises(ConfigError, match="state.dim"):
        generate("mixtral-8x7b", tokens=50, seed=0, features=99)


def test_lookahead_accuracy_meets_the_solved_expectation():
    trace = generate("mixtral-8x7b", tokens=20000, seed=4, features=0)
    target = trace.provenance["lookahead_accuracy_target"]
    k, n_layers = trace.spec.top_k, trace.spec.num_moe_layers
    for d, ahead in trace.lookahead.items():
        for layer in range(d, n_layers):
            pred, true = ahead[:, layer - d], trace.expert_ids[:, layer]
            hits = (pred[:, :, None] == true[:, None, :]).any(axis=2).sum(axis=1) / k
            assert abs(hits.mean() - target[str(d)][layer]) < 0.025, (d, layer)
    means = [np.nanmean(np.array(target[str(d)], dtype=float)) for d in sorted(trace.lookahead)]
    assert means == sorted(means, reverse=True)  # accuracy falls with distance


def test_mixtral_lookahead_target_is_the_published_per_layer_list():
    published = SynthConfig.preset("mixtral-8x7b").lookahead_accuracy
    assert len(published) == 31 and abs(np.mean(published) - 0.866) < 1e-3
    trace = generate("mixtral-8x7b", requests=1, seed=0)
    reached = np.array(trace.provenance["lookahead_accuracy_target"]["1"][1:])
    assert np.abs(reached - np.array(published)).max() < 0.01


def test_skew_grows_with_depth_when_alpha_does():
    cfg = SynthConfig.preset("qwen1.5-moe-a2.7b")
    assert cfg.alpha_last > cfg.alpha_first
    from moe_offload_lab.traces.analysis.entropy import entropy_bits

    entropy = entropy_bits(expert_counts(generate(cfg, tokens=4000, seed=5, features=0)))
    assert entropy[-1] < entropy[0] - 0.3


def test_persistence_knobs_move_the_statistics_they_name():
    base = SynthConfig.preset("gpt-oss-20b").with_overrides(request_share=0.0)

    def stats(**changes) -> dict:
        trace = generate(base.with_overrides(**changes), tokens=3000, seed=9, features=0)
        lag1 = np.nanmean(np.divide(*overlap_ratio(trace, 1)))
        lag64 = np.nanmean(np.divide(*overlap_ratio(trace, 64)))
        return {"lag1": lag1, "lag64": lag64, "profile": routing_profile(trace, belady=False)}

    still, moving = stats(token_persistence=(0.0,)), stats(token_persistence=(0.8,))
    assert moving["lag1"] > still["lag1"] + 0.3  # adjacent tokens share more experts
    shared = stats(token_persistence=(0.0,), request_share=0.5)
    assert shared["lag64"] > still["lag64"] + 0.2  # request-level locality reaches far
    low = stats(layer_persistence=(0.2,))["profile"]["top1_transition"]["accuracy"]
    high = stats(layer_persistence=(0.98,))["profile"]["top1_transition"]["accuracy"]
    assert high > 2 * low + 0.03  # a persistent state makes the next layer's expert predictable


def test_a_preset_file_by_path_and_its_structure_file(tmp_path):
    spec = SynthConfig.preset("olmoe-1b-7b").model_spec()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", router=rng.standard_normal((spec.num_moe_layers, 64, 8)),
             bias=np.zeros((spec.num_moe_layers, 64)))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "model": "olmoe-1b-7b", "state": {"dim": 8}, "features": {"width": 8},
        "structure": {"file": "s.npz"}}))
    trace = generate(str(tmp_path / "p.yaml"), tokens=40, seed=0)
    assert trace.provenance["preset"] == "p" and trace.features.shape[2] == 8
    assert trace.provenance["config"]["structure_file"] == "s.npz"  # no folder of this machine
    np.savez(tmp_path / "s.npz", router=np.zeros((2, 2, 2)), bias=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="structure file s.npz holds"):
        generate(str(tmp_path / "p.yaml"), tokens=40, seed=0)


def test_bad_configs_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        SynthConfig.from_dict({"model": "mixtral-8x7b", "state": {"colour": 1}})
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
    with pytest.raises(ConfigError, match="token_persistence"):
        SynthConfig(model="mixtral-8x7b", token_persistence=1.0)
    with pytest.raises(ConfigError, match="noise"):
        SynthConfig(model="mixtral-8x7b", router_noise=-1.0)
    with pytest.raises(ConfigError, match="gates"):
        SynthConfig(model="mixtral-8x7b", gates="renormalised")
    with pytest.raises(ConfigError, match="structure file"):
        generate(SynthConfig(model="mixtral-8x7b", structure_file="/nonexistent/s.npz"),
                 tokens=5)
    with pytest.raises(ConfigError, match="kind"):
        LengthDist(kind="poisson")


# ---- calibration targets: each model's own published figures (traces/README.md) -------------
def _profile(name: str, tokens: int) -> dict:
    return routing_profile(generate(name, tokens=tokens, seed=11, features=0), belady=False)


def test_mixtral_preset_meets_its_published_targets():
    profile = _profile("mixtral-8x7b", 20000)
    assert abs(profile["lru_hit_ratio"]["0.25"] - 0.302) <= 0.05  # HybriMoE
    assert abs(profile["lru_hit_ratio"]["0.75"] - 0.806) <= 0.05  # HybriMoE
    assert 1.7 <= profile["top1_reuse"]["ratio"] <= 2.3  # top-1 reuse about 2x chance
    assert profile["hottest_share"]["max"] <= 1.5  # near-uniform popularity


@pytest.mark.parametrize("name, published", [("deepseek-v2-lite", 0.477),
                                             ("qwen2-57b-a14b", 0.450)])
def test_hybrimoe_lru_hit_rates_at_a_quarter_of_the_experts(name, published):
    assert abs(_profile(name, 6000)["lru_hit_ratio"]["0.25"] - published) <= 0.05


def test_qwen3_preset_meets_its_published_targets():
    from moe_offload_lab.traces.analysis.locality import experts_for_95pct

    trace = generate("qwen3-30b-a3b", tokens=5000, seed=12, features=0)
    assert 0.4 <= np.nanmean(experts_for_95pct(trace)) <= 0.6  # 95% of traffic on about half
    observed, chance = overlap_ratio(trace, 1)
    assert 1.7 <= np.nanmean(observed / chance) <= 2.3  # adjacent reuse about 2x chance
