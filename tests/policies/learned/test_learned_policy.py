"""The ``learned`` predictor: Predictor contract, batch union, and end-to-end simulator runs
with its measured decision cost in the event log."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.learned import checkpoint
from moe_offload_lab.policies.learned.data import build_examples
from moe_offload_lab.policies.learned.runner import Runner
from moe_offload_lab.policies.registry import PREDICTORS
from moe_offload_lab.traces.errors import ConfigError
from omegaconf import OmegaConf

NAMES = ["history-transformer", "llapor", "probe", "promoe", "logreg-history",
         "logreg-features", "mlp-history", "mlp-features"]
CKPT = "policies/learned/checkpoints/{}.pt"


def _drive(pred, trace, rows, batch):
    """Run the predictor over ``rows`` in batches; yields (step rows, layer, prediction)."""
    spec = trace.spec
    ctx = LayerContext(spec, SlotCache(spec.top_k, spec.num_experts, spec.num_moe_layers))
    for step, start in enumerate(range(0, len(rows), batch)):
        r = rows[start:start + batch]
        ctx.begin_step(step, trace.request_id[r], trace.phase[r], r)
        pred.begin_step(ctx)
        for layer in range(spec.num_moe_layers):
            routing = trace.expert_ids[r, layer].astype(np.int64)
            experts, counts = np.unique(routing, return_counts=True)
            ctx.set_layer(layer, experts, counts, routing=routing)
            if pred.learns:
                pred.observe(ctx)
            yield r, layer, pred.predict(ctx)


@pytest.mark.parametrize("name", ["history-transformer", "promoe"])
def test_predictor_matches_the_model_at_batch_one_and_unions_batches(name) -> None:
    import moe_offload_lab.traces.bundled as bundled_traces

    trace = bundled_traces.load()
    pred = PREDICTORS.build({"name": "learned", "checkpoint": CKPT.format(name),
                             "min_score": 0.0})
    pred.reset(trace.spec, 3, trace)
    rows = np.arange(6)
    model, _ = checkpoint.load(CKPT.format(name))
    ex = build_examples(trace, rows, model.shape.context, 3)
    runner = Runner(model)
    for r, layer, prediction in _drive(pred, trace, rows, 1):
        i = int(r[0]) * 4 + layer
        want = runner.probs(layer, ex.history[i:i + 1], ex.features[i:i + 1]).numpy()[0]
        got = prediction.dense()
        n_dist = min(3, 3 - layer)
        assert np.allclose(got[:n_dist], want[:n_dist], atol=1e-6)
        assert not got[n_dist:].any()  # wrap-around targets: nothing
        assert prediction.targets[:n_dist] == [layer + d for d in range(1, n_dist + 1)]
    single = {}
    for r, layer, prediction in _drive(pred, trace, rows, 1):
        single[(int(r[0]), layer)] = prediction.dense().copy()
    for _, layer, prediction in _drive(pred, trace, rows, 6):
        union = 1 - np.prod([1 - single[(t, layer)] for t in rows.tolist()], axis=0)
        assert np.allclose(prediction.dense(), union, atol=1e-5)
        ranked = prediction.ranked[0]
        conf = prediction.confidence[0]
        assert list(conf) == sorted(conf, reverse=True) and len(ranked) == len(conf)


def test_decision_cost_comes_from_the_checkpoint() -> None:
    meta = checkpoint.read_meta(CKPT.format("probe"))
    pred = PREDICTORS.build({"name": "learned", "checkpoint": CKPT.format("probe")})
    cpu = meta["cost"]["cpu"]
    assert pred.decision_cost.where == "cpu"
    assert pred.decision_cost.fixed_s == pytest.approx(cpu["fixed_s"])
    assert pred.decision_cost.per_token_s == pytest.approx(cpu["per_token_s"])
    assert pred.decision_cost.seconds(1) > 1e-6
    gpu = PREDICTORS.build({"name": "learned", "checkpoint": CKPT.format("probe"),
                            "where": "gpu"})
    assert gpu.decision_cost.where == "gpu"


def test_bad_predictor_inputs_are_one_line_errors(tmp_path) -> None:
    from moe_offload_lab.traces.synthetic import generate

    with pytest.raises(ConfigError, match="needs checkpoint"):
        PREDICTORS.build({"name": "learned"})
    with pytest.raises(ConfigError, match="checkpoint not found"):
        PREDICTORS.build({"name": "learned", "checkpoint": str(tmp_path / "none.pt")})
    with pytest.raises(ConfigError, match="union"):
        PREDICTORS.build({"name": "learned", "checkpoint": CKPT.format("probe"), "union": "x"})
    with pytest.raises(ConfigError, match="CUDA is not available"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        PREDICTORS.build({"name": "learned", "checkpoint": CKPT.format("probe"),
                          "device": "cuda"})
    synth = generate("switch-base-8", tokens=50, seed=0)
    pred = PREDICTORS.build({"name": "learned", "checkpoint": CKPT.format("mlp-history")})
    with pytest.raises(ConfigError, match="was trained for 4 MoE layers"):
        pred.reset(synth.spec, 3, synth)
    import moe_offload_lab.traces.bundled as bundled_traces

    trace = bundled_traces.load()
    no_features = trace.select(np.arange(10))
    no_features.features = None
    pred = PREDICTORS.build({"name": "learned", "checkpoint": CKPT.format("llapor")})
    with pytest.raises(ConfigError, match="needs a replayed trace with features"):
        pred.reset(trace.spec, 3, no_features)


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_the_simulator_and_charges_its_cost(name) -> None:
    from moe_offload_lab.sim.cli import compose
    from moe_offload_lab.sim.run import RunConfig, simulate

    cfg = OmegaConf.to_container(compose(["model=tiny-moe-stdlib",
                                          "trace.bundled=tiny-moe-stdlib", "batch=16"]),
                                 resolve=True)
    cfg["policy"] = {"name": f"test-learned-{name}", "horizon": 3, "seed": 0,
                     "predictor": {"name": "learned", "checkpoint": CKPT.format(name)},
                     "planner": {"name": "cost-aware", "min_confidence": 0.05},
                     "replacement": {"name": "lru"}, "placement": {"name": "gpu"},
                     "admission": {"name": "always"}}
    result = simulate(RunConfig.from_dict(cfg))
    s = result.summary  # what the run charged: the table's figures plus the checkpoint's own
    cost = DecisionCost(s["decision_cost_where"], s["decision_cost_fixed_us"] * 1e-6,
                        s["decision_cost_per_token_us"] * 1e-6)
    predictor_cost = checkpoint.read_meta(CKPT.format(name))["cost"]["cpu"]
    assert cost.fixed_s >= predictor_cost["fixed_s"] > 0
    events = result.events
    rows = events[events["kind"].astype(str) == "policy"]
    assert len(rows) == result.summary["steps"] * 4
    assert (rows["resource"].astype(str) == "cpu").all()
    seconds = rows["end_s"] - rows["start_s"]
    expected = cost.fixed_s + rows["count"] * cost.per_token_s
    assert np.allclose(seconds, expected, rtol=1e-6, atol=1e-12)
    assert result.summary["tokens"] == 10_648
    assert result.summary["prefetch_recall"] > 0


@pytest.mark.parametrize("name", ["history-transformer", "llapor", "probe", "promoe"])
def test_bundled_policy_configs_keep_the_contract(name) -> None:
    """The contract checks of tests/policies/test_policy_contract.py, on the one model shape
    the shipped checkpoints fit (that test's random shapes cannot run a trained model)."""
    import moe_offload_lab.traces.bundled as bundled_traces
    from moe_offload_lab.policies import load_policy
    from moe_offload_lab.policies.evaluation import evaluate
    from policy_testing import delayed_replay

    trace = bundled_traces.load()
    trace = trace.select(np.isin(trace.request_id, [0, 1, 2]))
    delayed_replay(load_policy(f"learned-{name}"), trace, 16, batch=4, seed=0)
    first = evaluate(trace, load_policy(f"learned-{name}"), 16, batch=4).to_dict()
    again = evaluate(trace, load_policy(f"learned-{name}"), 16, batch=4).to_dict()
    assert first == again


def test_prophet_and_prescope_configs_use_the_papers_mechanisms() -> None:
    from moe_offload_lab.policies import load_policy
    from moe_offload_lab.policies.planners.presched import PreSched
    from moe_offload_lab.policies.replacement.confidence import ConfidenceGuided

    prophet = load_policy("prophet")
    assert prophet.predictor.name == "learned" and prophet.predictor.auto
    assert prophet.predictor.recipe.predictor == "history-transformer"
    assert isinstance(prophet.replacement, ConfidenceGuided)
    assert prophet.config.horizon == 3
    prescope = load_policy("prescope")
    assert prescope.predictor.recipe.predictor == "llapor"
    assert isinstance(prescope.planner, PreSched) and prescope.placement.name == "fiddler"


def test_prescope_needs_hidden_state_features(tmp_path, monkeypatch) -> None:
    from moe_offload_lab.policies import load_policy
    from moe_offload_lab.policies.evaluation import evaluate
    from moe_offload_lab.policies.toy_traces import make_trace, toy_spec
    from moe_offload_lab.traces.errors import ConfigError

    monkeypatch.setenv("MOE_OFFLOAD_LAB_CACHE", str(tmp_path))
    trace = make_trace(toy_spec(4, 8, 2), 40, requests=3)  # no features
    with pytest.raises(ConfigError, match="needs a trace with features"):
        evaluate(trace, load_policy("prescope"), 8)
