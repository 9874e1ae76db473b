"""PROBE's learned lookahead predictor connected to the balancer (on the bundled real trace)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from moe_offload_lab.policies.balancing.base import BalanceSetup, StepBatch
from moe_offload_lab.policies.balancing.learned_load import LearnedLoad, train_lookahead_model
from moe_offload_lab.policies.learned import checkpoint
from moe_offload_lab.sim.cluster import simulate_cluster
from moe_offload_lab.traces import bundled
from moe_offload_lab.traces.errors import ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    trace = bundled.load("tiny-moe-stdlib")  # 4 MoE layers, 16 experts, 16 features
    path = train_lookahead_model(trace, tmp_path_factory.mktemp("probe") / "probe.pt",
                                 epochs=6, seed=0)
    return trace, path


def _setup(trace) -> BalanceSetup:
    spec = trace.spec
    return BalanceSetup(ranks=4, ranks_per_node=4, num_experts=spec.num_experts,
                        num_layers=spec.num_moe_layers, top_k=spec.top_k, redundant_slots=1,
                        expert_bytes=spec.expert_bytes, has_lookahead=tuple(trace.lookahead),
                        feature_dim=trace.features.shape[2])


def test_expected_load_is_the_models_probabilities_summed(trained) -> None:
    trace, path = trained
    model, meta = checkpoint.load(path)
    assert model.reads_lookahead and meta["model"]["hp"]["prior"] == "lookahead"
    learned = LearnedLoad.load(path, _setup(trace), 1)
    rows = np.arange(40, 90)
    load = learned.expected_load(StepBatch(0, 0, len(rows), {}, trace, rows))  # [L, E]
    assert (load[0] == 0).all()  # nothing reaches layer 0 from an earlier layer
    with torch.no_grad():
        for layer in range(1, 4):
            feats = torch.as_tensor(trace.features[rows, layer - 1].astype(np.float32))
            ids = torch.as_tensor(trace.lookahead[1][rows, layer - 1].astype(np.int64))
            probs = torch.sigmoid(model(layer - 1, ids[:, None, :], feats))[:, 0]
            assert np.allclose(load[layer], probs.sum(0).numpy(), atol=1e-4)


def test_the_learned_predictor_beats_its_gate_prior_on_held_out_requests(trained) -> None:
    trace, path = trained
    meta = checkpoint.read_meta(path)
    held = meta["trace"]["test_requests"]
    seen = set(meta["trace"]["train_requests"]) | set(meta["trace"]["val_requests"])
    assert held and not seen & set(held)  # the split kept requests out of training
    learned = LearnedLoad.load(path, _setup(trace), 1)
    errors = {"learned": 0.0, "gate": 0.0}
    for request in held:
        rows = np.flatnonzero(trace.request_id == request)
        truth = np.stack([np.bincount(trace.expert_ids[rows, t].ravel(), minlength=16)
                          for t in range(4)])
        gate = np.stack([np.bincount(trace.lookahead[1][rows, t - 1].ravel(), minlength=16)
                         if t else np.zeros(16) for t in range(4)])
        pred = learned.expected_load(StepBatch(0, 0, len(rows), {}, trace, rows))
        errors["learned"] += np.abs(pred[1:] - truth[1:]).sum()
        errors["gate"] += np.abs(gate[1:] - truth[1:]).sum()
    assert errors["learned"] < errors["gate"]


def test_the_probe_balancer_runs_the_learned_predictor(trained) -> None:
    trace, path = trained
    cluster = {"base": "h100x8-nvswitch", "ranks": 4, "ranks_per_node": 4, "redundant_slots": 1}
    balance = {"name": "probe", "checkpoint": str(path)}
    result = simulate_cluster({"cluster": cluster, "balance": balance, "batch": 8,
                               "max_steps": 30}, trace=trace)
    assert result.summary["balance"] == "probe" and result.summary["decision_s"] > 0
    gate = simulate_cluster({"cluster": cluster, "balance": "probe-gate", "batch": 8,
                             "max_steps": 30}, trace=trace)
    # the residual MLP's two GEMMs are charged on the decision stream
    assert result.summary["decision_s"] > gate.summary["decision_s"]


def test_a_lookahead_checkpoint_is_refused_where_it_cannot_work(trained) -> None:
    trace, path = trained
    model, _ = checkpoint.load(path)
    feats = torch.as_tensor(trace.features[:3, 0].astype(np.float32))
    with pytest.raises(ConfigError, match="use it through the probe balancer"):
        model(0, None, feats)  # what an offload policy passes (features only)
    setup = _setup(trace)
    wrong = BalanceSetup(**{**setup.__dict__, "feature_dim": 8})
    with pytest.raises(ConfigError, match="reads 16 hidden-state features"):
        LearnedLoad.load(path, wrong, 1)
    with pytest.raises(ConfigError, match="predicts distances up to 1"):
        LearnedLoad.load(path, setup, 2)
    with pytest.raises(ConfigError, match="not a probe model with prior: lookahead"):
        LearnedLoad.load(Path(__file__).resolve().parents[3] / "policies" / "learned"
                         / "checkpoints" / "probe.pt", setup, 1)


def test_checkpoint_auto_trains_once_on_the_training_requests(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the cache lives under outputs/cache/probe-predictor
    trace = bundled.load("tiny-moe-stdlib")
    cluster = {"base": "h100x8-nvswitch", "ranks": 4, "ranks_per_node": 4, "redundant_slots": 1}
    config = {"cluster": cluster, "balance": "probe",  # checkpoint: auto
              "batch": 8, "max_steps": 5}
    first = simulate_cluster(config, trace=trace)
    assert "training PROBE's lookahead predictor" in capsys.readouterr().out
    cached = list((tmp_path / "outputs" / "cache" / "probe-predictor").glob("*/model.pt"))
    assert len(cached) == 1 and str(cached[0].parent.name) in first.summary["balance_params"]
    again = simulate_cluster(config, trace=trace)  # loads, does not train again
    assert "training" not in capsys.readouterr().out
    assert again.summary["total_s"] == first.summary["total_s"]
