"""Measured decision costs: the table's lookup, what a composed policy is charged and how the
source is labelled, ``moe-policy cost`` writing (and merging) a table with its provenance."""

from __future__ import annotations

import pytest
import yaml
from moe_offload_lab.policies.cli import main
from moe_offload_lab.policies.config import (
    build_policy,
    component_id,
    load_policy_config,
    shape_free_policies,
)
from moe_offload_lab.policies.cost import CostModel
from moe_offload_lab.policies.cost_table import (
    CostTable,
    cost_summary,
    fingerprint,
    fit_line,
    load_table,
    write_table,
)
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.errors import ConfigError

MIXTRAL = load_model("mixtral-8x7b")
QWEN = load_model("qwen3-30b-a3b")


def _table(tmp_path, **components) -> str:
    shapes = {"mixtral-8x7b": {"num_moe_layers": 32, "num_experts": 8, "top_k": 2},
              "qwen3-30b-a3b": {"num_moe_layers": 48, "num_experts": 128, "top_k": 8}}
    table = CostTable(shapes, (1, 32), components,
                      {"mixtral-8x7b": {"b1": 1.0, "b32": 2.0},
                       "qwen3-30b-a3b": {"b1": 3.0, "b32": 30.0}},
                      {"date": "test"})
    return str(write_table(table, tmp_path / "costs.yaml"))


def test_fit_line_is_non_negative() -> None:
    fixed, per_token = fit_line([(1, 11e-6), (32, 42e-6)])
    assert fixed == pytest.approx(10e-6) and per_token == pytest.approx(1e-6)
    assert fit_line([(1, 5e-6), (32, 4e-6)])[1] == 0.0  # never a negative per-token cost
    fixed, per_token = fit_line([(1, 1e-6), (32, 64e-6)])  # would cross zero: through the origin
    assert fixed == 0.0 and per_token > 0
    assert fit_line([(1, 3e-6)]) == (3e-6, 0.0)


def test_lookup_by_shape_and_horizon(tmp_path) -> None:
    path = _table(tmp_path, predictor={"history": {
        "mixtral-8x7b": {"h1": {"b1": 2.0, "b32": 4.0}, "h3": {"b1": 6.0, "b32": 4.0}},
        "qwen3-30b-a3b": {"h1": {"b1": 20.0, "b32": 40.0}, "h3": {"b1": 60.0, "b32": 100.0}}}})
    table = load_table(path)
    assert table.shape_for(MIXTRAL) == "mixtral-8x7b"
    assert table.shape_for(QWEN) == "qwen3-30b-a3b"
    assert table.shape_for(load_model("deepseek-v3")) == "qwen3-30b-a3b"  # E=256, k=8
    assert table.shape_for(load_model("switch-base-8")) == "mixtral-8x7b"
    us = table.component_us("predictor", "history", "mixtral-8x7b", 2)
    assert us == {1: pytest.approx(4.0), 32: pytest.approx(4.0)}  # halfway; flat at b32
    us = table.component_us("predictor", "history", "qwen3-30b-a3b", 5)
    assert us[1] == pytest.approx(100.0) and us[32] == pytest.approx(160.0)  # extrapolated
    assert table.component_us("predictor", "nothing", "mixtral-8x7b", 1) is None


def test_policy_is_charged_from_the_table(tmp_path) -> None:
    path = _table(tmp_path,
                  replacement={"lru": {"mixtral-8x7b": {"b1": 1.0, "b32": 32.0},
                                       "qwen3-30b-a3b": {"b1": 1.0, "b32": 1.0}}},
                  predictor={"none": {"mixtral-8x7b": {"h1": {"b1": 0.0, "b32": 0.0}}}},
                  planner={"on-demand": {"mixtral-8x7b": {"h1": {"b1": 0.0, "b32": 0.0}}}},
                  placement={"gpu": {"mixtral-8x7b": {"b1": 0.0, "b32": 0.0}}},
                  admission={"always": {"mixtral-8x7b": {"b1": 0.0, "b32": 0.0}}})
    config = load_policy_config("lru").to_dict() | {"decision_cost": {"table": path}}
    policy = build_policy(config)
    policy.reset(MIXTRAL, 64, CostModel.for_spec(MIXTRAL))
    # components 1 + 32 us at b1 and b32, plus the composed policy's own 1 and 2 us
    assert policy.decision_cost.seconds(1) == pytest.approx(2e-6)
    assert policy.decision_cost.seconds(32) == pytest.approx(34e-6)
    summary = cost_summary(policy)
    assert summary["decision_cost_source"] == "measured"
    assert summary["decision_cost_table"] == path
    # on qwen3 the table lacks all but lru: the others' declared figures are charged (zero but
    # for the gpu placement's 0.2 us + 0.01 us/token), and the source says so
    policy.reset(QWEN, 1024, CostModel.for_spec(QWEN))
    assert policy.decision_cost.seconds(1) == pytest.approx(4e-6 + 0.21e-6)
    summary = cost_summary(policy)
    assert summary["decision_cost_source"] == "measured+declared"
    assert summary["decision_cost_declared"] == ["placement:gpu"]
    config["replacement"] = {"name": "lfu"}  # not in the table, declares a positive cost
    policy = build_policy(config)
    policy.reset(MIXTRAL, 64, CostModel.for_spec(MIXTRAL))
    summary = cost_summary(policy)
    assert summary["decision_cost_source"] == "measured+declared"
    assert summary["decision_cost_declared"] == ["replacement:lfu"]


def test_a_measured_whole_policy_is_charged_its_own_measurement(tmp_path) -> None:
    config = load_policy_config("lru").to_dict()
    lru = build_policy(config)
    fp = fingerprint(lru.components_by_kind())
    path = _table(tmp_path, replacement={"lru": {"mixtral-8x7b": {"b1": 50.0, "b32": 50.0}}})
    data = yaml.safe_load(open(path))
    data["policies"] = {fp: {"name": "lru", "mixtral-8x7b": {"h1": {"b1": 3.0, "b32": 34.0}}}}
    (tmp_path / "costs.yaml").write_text(yaml.safe_dump(data))
    policy = build_policy(config | {"decision_cost": {"table": path}})
    policy.reset(MIXTRAL, 64, CostModel.for_spec(MIXTRAL))
    assert policy.decision_cost.seconds(1) == pytest.approx(3e-6)  # the whole, not 50 + glue
    assert policy.decision_cost.seconds(32) == pytest.approx(34e-6)
    assert cost_summary(policy)["decision_cost_source"] == "measured"
    # another parameter: no longer the measured policy, charged from its components
    variant = config | {"decision_cost": {"table": path},
                        "admission": {"name": "min-count", "min_count": 3}}
    policy = build_policy(variant)
    policy.reset(MIXTRAL, 64, CostModel.for_spec(MIXTRAL))
    assert policy.decision_cost.seconds(1) > 50e-6


def test_hand_typed_cost_is_labelled_declared(tmp_path) -> None:
    config = load_policy_config("lru").to_dict() | {
        "decision_cost": {"where": "cpu", "fixed_s": 5e-6, "per_token_s": 0.0}}
    policy = build_policy(config)
    policy.reset(MIXTRAL, 64, CostModel.for_spec(MIXTRAL))
    assert policy.decision_cost.seconds(32) == 5e-6
    assert cost_summary(policy)["decision_cost_source"] == "declared"
    with pytest.raises(ConfigError, match="no such file"):
        build_policy(config | {"decision_cost": {"table": str(tmp_path / "none.yaml")}})
    with pytest.raises(ConfigError, match="takes nothing else"):
        build_policy(config | {"decision_cost": {"table": "x", "fixed_s": 1.0}})


def test_committed_table_covers_every_bundled_component() -> None:
    table = load_table()
    assert table is not None, "conf/decision_costs/default.yaml is missing"
    prov = table.provenance
    assert prov["machine"]["cpu"] and prov["date"] and prov["versions"]["numpy"]
    assert set(table.batches) >= {1, 32}
    for name in shape_free_policies():
        config = load_policy_config(name)
        for kind in ("predictor", "planner", "replacement", "placement", "admission"):
            cid = component_id(getattr(config, kind))
            for model in table.shapes:
                assert table.component_us(kind, cid, model, config.horizon) is not None, \
                    f"{kind} {cid} of {name} lacks a measurement on {model}"
        policy = build_policy(name)
        whole = table.policies.get(fingerprint(policy.components_by_kind()))
        assert whole is not None and whole["name"] == name, f"{name} is not measured whole"
        assert set(whole) == {"name", *table.shapes}
        if policy.is_oracle:  # needs the trace in reset; its components are covered above
            continue
        policy.reset(MIXTRAL, 64, CostModel.for_spec(MIXTRAL))
        assert cost_summary(policy)["decision_cost_source"] == "measured", name
        assert policy.decision_cost.seconds(1) > 0


def test_cost_command_writes_and_merges_a_table(tmp_path, capsys) -> None:
    out = tmp_path / "costs.yaml"
    args = ["cost", "--out", str(out), "--models", "mixtral-8x7b", "--batches", "1,4",
            "--tokens", "48", "--batch-tokens", "64", "--repeat", "1"]
    assert main([*args, "--policies", "lru"]) == 0
    printed = capsys.readouterr().out
    assert "replacement lru" in printed and f"wrote {out}" in printed
    data = yaml.safe_load(out.read_text())
    assert out.read_text().startswith("# Policy decision cost per MoE layer")
    assert {"machine", "date", "versions", "command", "settings", "method"} <= set(
        data["provenance"])
    assert data["batches"] == [1, 4] and list(data["shapes"]) == ["mixtral-8x7b"]
    lru = data["components"]["replacement"]["lru"]["mixtral-8x7b"]
    assert set(lru) == {"b1", "b4"} and all(v >= 0 for v in lru.values())
    assert main([*args, "--policies", "history"]) == 0  # merged into the same table
    data = yaml.safe_load(out.read_text())
    assert "lru" in data["components"]["replacement"]
    assert sorted(e["name"] for e in data["policies"].values()) == ["history", "lru"]
    assert set(data["components"]["predictor"]["history"]["mixtral-8x7b"]) == {"h1", "h3"}
    assert main([*args[:3], "--models", "qwen3-30b-a3b", "--batches", "1", "--tokens", "16",
                 "--repeat", "1", "--policies", "lru"]) == 2  # other shapes: no silent merge
    assert "regenerate it whole" in capsys.readouterr().err
    assert main(["cost", "--out", str(out), "--policies", "no-such-policy"]) == 2
