"""``moe-train``: training, evaluation (tables, figure, transfer) and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from learned_testing import planted_trace
from moe_offload_lab.policies import load_policy
from moe_offload_lab.policies.learned.cli import main
from moe_offload_lab.policies.learned.evaluate import score
from moe_offload_lab.policies.learned.timing import fit_cost, measure_cpu, measure_cuda
from moe_offload_lab.traces.errors import ConfigError

FAST = ["progress=false", "train.max_steps=40", "train.epochs=2", "cost.repeats=2",
        "cost.warmup=1", "split.val=0.2", "split.test=0.2"]


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "planted.parquet"
    planted_trace().save(path)
    return path


def test_train_writes_checkpoint_and_evaluate_compares(trace_file, tmp_path, capsys) -> None:
    out = tmp_path / "promoe"
    rc = main(["predictor=promoe", f"trace.paths=[{trace_file}]", f"out={out}", *FAST])
    assert rc == 0
    meta = json.loads((out / "model.json").read_text())
    assert (out / "model.pt").is_file() and not list(out.glob("*.tmp"))
    assert meta["model"]["kind"] == "promoe" and meta["spec"]["num_experts"] == 8
    assert set(meta["cost"]["cpu"]["batch_s"]) == {"1", "32"}
    assert meta["cost"]["cpu"]["fixed_s"] > 0
    assert meta["trace"]["source"] == "files"
    assert not set(meta["trace"]["train_requests"]) & set(meta["trace"]["test_requests"])
    assert "DecisionCost('cpu'" in capsys.readouterr().out
    ev = tmp_path / "eval"
    rc = main(["evaluate", f"trace.paths=[{trace_file}]", f"eval.checkpoints=[{out}/model.pt]",
               f"eval.out={ev}", "eval.heuristics=[history,gate-lookahead]", *FAST])
    assert rc == 0
    table = pd.read_csv(ev / "eval.csv")
    assert set(table["predictor"]) == {"promoe", "history", "gate-lookahead"}
    assert {"precision", "recall", "topk_acc", "ece"} <= set(table.columns)
    assert (ev / "eval.md").read_text().startswith("| predictor")
    assert (ev / "eval.png").stat().st_size > 1000
    assert len(pd.read_csv(ev / "reliability.csv")) > 0
    # the planted rule: gate-lookahead (exact columns) and the history table are perfect at d=1
    all_d1 = table[(table["layer"] == "all") & (table["distance"] == 1)].set_index("predictor")
    assert all_d1.loc["gate-lookahead", "topk_acc"] == pytest.approx(1.0)
    assert all_d1.loc["history", "topk_acc"] > 0.9
    assert not table[table["predictor"] == "promoe"]["transfer"].any()


def test_transfer_to_another_trace(trace_file, tmp_path) -> None:
    out = tmp_path / "mlp"
    assert main(["predictor=mlp-history", f"trace.paths=[{trace_file}]", f"out={out}",
                 *FAST]) == 0
    other = tmp_path / "other.parquet"
    planted_trace(requests=10, seed=5, features=False).save(other)
    ev = tmp_path / "transfer"
    assert main(["evaluate", f"trace.paths=[{other}]", f"eval.checkpoints=[{out}/model.pt]",
                 f"eval.out={ev}", "eval.heuristics=[]", "eval.figure=false", *FAST]) == 0
    table = pd.read_csv(ev / "eval.csv")
    assert table["transfer"].all()


@pytest.mark.parametrize(("args", "message"), [
    (["trace.paths=[missing.parquet]"], "trace file not found"),
    (["predictor=llapor", "trace.bundled=flame-moe-290m"], "needs a trace with features"),
    (["predictor=nope"], "unknown predictor 'nope'; available: history-transformer"),
    (["train.pos_weight=half"], "pos_weight"),
    (["predictor=probe", "+predictor.router_weights=missing.npy"], "router weights not found"),
    (["evaluate", "eval.checkpoints=[missing.pt]"], "checkpoint not found"),
])
def test_bad_inputs_give_one_line_and_exit_2(args, message, capsys, tmp_path) -> None:
    rc = main([*args, f"out={tmp_path}/x", *FAST])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("moe-train: error:") and message in err
    assert len(err.splitlines()) == 1


def test_evaluate_refuses_checkpoints_trained_on_the_test_requests(trace_file, tmp_path,
                                                                    capsys) -> None:
    out = tmp_path / "lr"
    assert main(["predictor=logreg-history", f"trace.paths=[{trace_file}]", f"out={out}",
                 *FAST]) == 0
    rc = main(["evaluate", f"trace.paths=[{trace_file}]", f"eval.checkpoints=[{out}/model.pt]",
               "split.seed=1", f"eval.out={tmp_path}/e", *FAST])
    assert rc == 2
    assert "trained on requests of this test split" in capsys.readouterr().err


def test_policy_configs_build_with_the_cost_aware_planner() -> None:
    for name in ("history-transformer", "llapor", "probe", "promoe"):
        policy = load_policy(f"learned-{name}")
        assert policy.config.planner["name"] == "cost-aware"
        assert policy.predictor.name == "learned"
        assert policy.decision_cost.fixed_s > 0


def test_timing_fit_and_cuda_path() -> None:
    import torch
    from moe_offload_lab.policies.learned.models import Shape, build_model

    assert fit_cost({1: 1e-4, 32: 4.1e-4}) == pytest.approx((9e-5, 1e-5))
    assert fit_cost({1: 2e-4, 32: 1e-4}) == (2e-4, 0.0)
    model = build_model("logreg", Shape(4, 8, 2, 2, 2, 0))
    timed = measure_cpu(model, repeats=3, warmup=1)
    assert 0 < timed["batch_s"]["1"] < 0.1
    if torch.cuda.is_available():
        assert measure_cuda(model, repeats=3, warmup=1)["batch_s"]["1"] > 0
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            measure_cuda(model)


def test_score_of_a_perfect_and_of_an_empty_predictor(planted) -> None:
    from moe_offload_lab.policies.learned.data import build_examples

    ex = build_examples(planted, None, 1, 2)
    rows, curve = score(ex.targets.astype("float32"), ex, top_k=2)
    for r in rows:
        assert (r["precision"], r["recall"], r["topk_acc"], r["ece"]) == (1.0, 1.0, 1.0, 0.0)
    assert {c["bin"] for c in curve} == {0, 9}
    rows, _ = score(ex.targets.astype("float32") * 0.0, ex, top_k=2)
    assert all(r["recall"] == 0.0 for r in rows)


def test_info_prints_the_split_and_cache_lists(trace_file, tmp_path, capsys, monkeypatch) -> None:
    rc = main(["info", f"trace.paths=[{trace_file}]", f"info.out={tmp_path / 'info'}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| planted |" in out and "Prophet (its models, published)" in out
    rows = json.loads((tmp_path / "info" / "info.json").read_text())
    assert rows[0]["model"] == "planted" and rows[0]["history_bits"] > 1.0  # a planted rule
    monkeypatch.setenv("MOE_OFFLOAD_LAB_CACHE", str(tmp_path / "cache"))
    assert main(["cache"]) == 0
    assert "0 checkpoint(s)" in capsys.readouterr().out
