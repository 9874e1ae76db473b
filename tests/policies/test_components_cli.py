"""``moe-policy components`` and ``moe-policy show``: every component with its parameters,
defaults, doc and measured cost; a composed policy with every parameter resolved."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from moe_offload_lab.policies.cli import main
from moe_offload_lab.policies.registry import REGISTRIES


def test_components_lists_every_component_with_its_parameters(capsys) -> None:
    assert main(["components", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    rows = {(r["kind"], r["name"]): r for r in payload["components"]}
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            row = rows[kind, name]
            assert row["doc"] and row["source"] == "built-in"
            fields = dataclasses.fields(registry.get(name).Params) \
                if hasattr(registry.get(name), "Params") else ()
            assert [p["name"] for p in row["params"]] == [f.name for f in fields]
    history = rows["predictor", "history"]
    assert history["params"] == [{"name": "max_candidates", "type": "int", "default": 0,
                                  "doc": history["params"][0]["doc"]}]
    assert "keep at most" in history["params"][0]["doc"]
    assert rows["replacement", "belady"]["flags"] == ["upper bound"]
    assert rows["replacement", "lru"]["cost_us"]["mixtral-8x7b"]["b1"] >= 0
    assert payload["cost_table"].endswith("default.yaml")


def test_components_text(capsys) -> None:
    assert main(["components", "--kind", "planner"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("planner components")
    assert "  lookahead: " in out and "      budget_experts: int = 0" in out
    assert "measured us/layer at horizon 1: mixtral-8x7b b1" in out
    assert "predictor components" not in out and "_target_: package.module.Class" in out


def test_show_resolves_every_parameter(capsys) -> None:
    assert main(["show", "history"]) == 0
    out = capsys.readouterr().out
    head = [line for line in out.splitlines() if line.startswith("#")]
    assert "HistoryPredictor" in "\n".join(head)
    assert any("mixtral-8x7b shape:" in line and "[measured]" in line for line in head)
    config = yaml.safe_load(out)
    assert config["predictor"] == {"name": "history", "max_candidates": 0}
    assert config["planner"]["budget_bytes"] is None  # defaults filled in
    assert config["placement"] == {"name": "gpu"}
    assert main(["show", "oracle-belady", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["oracle"] is True and "bypass" in payload["policy"]["replacement"]


def test_show_a_file_with_a_target_that_does_not_import(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\npredictor: {_target_: nowhere_pkg.Predictor}\n")
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("moe-policy: error: predictor _target_ 'nowhere_pkg.Predictor' does not "
                   "import: no module named 'nowhere_pkg' (install its package, or put the "
                   "folder holding it on PYTHONPATH)")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("moe-policy 0.")
