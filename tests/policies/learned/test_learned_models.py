"""Every learned predictor trains (loss falls), learns a planted rule, and reloads exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moe_offload_lab.policies.learned import checkpoint
from moe_offload_lab.policies.learned.data import build_examples, split_by_request
from moe_offload_lab.policies.learned.evaluate import learned_probs, score
from moe_offload_lab.policies.learned.models import Shape, build_model
from moe_offload_lab.policies.learned.runner import Runner
from moe_offload_lab.policies.learned.train import (
    TrainParams,
    _Tensors,
    evaluate_loss,
    pos_weight,
    seed_all,
    train_model,
)
from moe_offload_lab.traces.errors import ConfigError

PREDICTORS = [
    ("history-transformer", {"d_model": 16, "heads": 2, "layers": 1, "ff": 32}),
    ("llapor", {"hidden": 16, "max_blocks": 2}),
    ("probe", {"hidden": 16}),
    ("promoe", {"hidden": 32}),
    ("logreg", {"inputs": "history"}),
    ("logreg", {"inputs": "features"}),
    ("mlp", {"inputs": "history", "hidden": 32}),
    ("mlp", {"inputs": "features", "hidden": 32}),
]
IDS = [f"{k}-{hp.get('inputs', '')}".rstrip("-") for k, hp in PREDICTORS]


def _data(trace, context=2, horizon=2):
    split = split_by_request(trace, 0.2, 0.2, seed=0)
    return [build_examples(trace, rows, context, horizon)
            for rows in (split.train_rows, split.val_rows, split.test_rows)]


def _shape(trace, context=2, horizon=2) -> Shape:
    return Shape(4, 8, 2, horizon, context, trace.features.shape[2])


@pytest.mark.parametrize(("kind", "hp"), PREDICTORS, ids=IDS)
def test_loss_falls_in_a_few_steps(planted, kind, hp) -> None:
    train, val, _ = _data(planted)
    model = build_model(kind, _shape(planted), **hp)
    model.fit_data(train.layer, train.history, train.features, train.targets, train.mask)
    weight = pos_weight(train, "sqrt")
    before = evaluate_loss(model, _Tensors(train), weight)
    history = train_model(model, train, val, TrainParams(epochs=3, batch_size=64, lr=1e-2,
                                                         patience=0, max_steps=30),
                          progress=False)
    after = evaluate_loss(model, _Tensors(train), weight)
    assert history["steps"] == 30
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize(("kind", "hp"), PREDICTORS, ids=IDS)
def test_planted_rule_is_learned(planted, kind, hp) -> None:
    train, val, test = _data(planted)
    model = build_model(kind, _shape(planted), **hp)
    train_model(model, train, val, TrainParams(epochs=60, batch_size=64, lr=1e-2, patience=8,
                                               pos_weight="full"), progress=False)
    rows, _ = score(learned_probs(Runner(model), test), test, top_k=2)
    d1 = next(r for r in rows if r["distance"] == 1 and r["layer"] == "all")
    assert d1["topk_acc"] >= 0.95, d1
    assert d1["recall"] >= 0.95, d1


def test_checkpoint_reloads_to_identical_predictions(planted, tmp_path) -> None:
    train, val, test = _data(planted, context=3, horizon=3)
    for kind, hp in (("history-transformer", PREDICTORS[0][1]), ("probe", {"hidden": 16})):
        model = build_model(kind, _shape(planted, 3, 3), **hp)
        train_model(model, train, val, TrainParams(epochs=2, max_steps=10), progress=False)
        path = checkpoint.save(tmp_path / kind / "model.pt", model, {"name": kind, "cost": {}})
        again, meta = checkpoint.load(path)
        assert meta["name"] == kind and meta["model"]["kind"] == kind
        a = learned_probs(Runner(model), test)
        b = learned_probs(Runner(again), test)
        assert np.array_equal(a, b)
    assert not list(tmp_path.rglob("*.tmp"))


def test_training_is_seeded(planted) -> None:
    train, val, _ = _data(planted)
    states = []
    for _ in range(2):
        seed_all(7)
        model = build_model("mlp", _shape(planted), inputs="history", hidden=16)
        train_model(model, train, val, TrainParams(epochs=2, max_steps=15, seed=7),
                    progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_llapor_is_pca_then_linear_gelu_blocks_deeper_in_the_middle(planted) -> None:
    from moe_offload_lab.policies.learned.models.layer_aware import depth_profile

    model = build_model("llapor", _shape(planted), min_blocks=0, max_blocks=2)
    assert [model.depth(layer) for layer in range(4)] == [0, 1, 1, 0]
    assert depth_profile(9, 1, 3) == [1, 2, 2, 3, 3, 3, 2, 2, 1]
    assert depth_profile(7, 1, 4) == [1, 2, 3, 4, 3, 2, 1]
    net = model.nets[1]
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "GELU", "LinearGELU", "Linear"]
    # PCA: 8 features compressed to 3 principal axes, fitted per layer on training features
    train, _, _ = _data(planted)
    small = build_model("llapor", _shape(planted), pca_dim=3)
    small.fit_data(train.layer, train.history, train.features, train.targets, train.mask)
    assert small.encoder.out_dim == 3 and small.nets[0][0].in_features == 3
    proj = small.encoder.proj[2].numpy()  # [F, 3] orthonormal columns
    np.testing.assert_allclose(proj.T @ proj, np.eye(3), atol=1e-5)
    z = train.features[train.layer == 2]
    z = (z - z.mean(0)) / (z.std(0) + 1e-6)
    top = np.linalg.svd(z, full_matrices=False)[2][0]  # the first principal axis
    assert abs(float(top @ proj[:, 0])) > 0.99


def test_probe_starts_from_its_prior_and_accepts_router_weights(planted) -> None:
    train, _, _ = _data(planted)
    model = build_model("probe", _shape(planted))
    model.fit_data(train.layer, train.history, train.features, train.targets, train.mask)
    feats = torch.as_tensor(train.features[train.layer == 0][:5])
    with torch.no_grad():
        out = model(0, None, feats)
        xa = torch.cat([feats, torch.ones(5, 1)], 1)
        prior = torch.einsum("bf,hfe->bhe", xa, model.prior[0]) * 4.0 - 2.0
    assert torch.allclose(out, prior, atol=1e-5)  # zero-initialised residual
    router = build_model("probe", _shape(planted))
    weights = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
    router.set_router_weights(weights)
    router.fit_data(train.layer, train.history, train.features, train.targets, train.mask)
    assert router.hp["prior"] == "router"
    assert np.allclose(router.prior[0, 0, :8].numpy(), weights[1].T)
    with pytest.raises(ConfigError, match="router weights must have shape"):
        router.set_router_weights(weights[:, :4])


def test_bad_model_configs_are_one_line_errors(planted) -> None:
    with pytest.raises(ConfigError, match="unknown learned predictor"):
        build_model("nope", _shape(planted))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        build_model("promoe", _shape(planted), depth=3)
    with pytest.raises(ConfigError, match="needs a trace with features"):
        build_model("llapor", Shape(4, 8, 2, 2, 2, 0))
