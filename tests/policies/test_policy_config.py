"""Registry, configs and the bundled policy library."""

from __future__ import annotations

import importlib

import pytest
from moe_offload_lab.policies import (
    available_policies,
    build_policy,
    load_policy,
    load_policy_config,
)
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.composed import ComposedPolicy
from moe_offload_lab.policies.registry import (
    ADMISSIONS,
    PLACEMENTS,
    PLANNERS,
    PREDICTORS,
    REPLACEMENTS,
    Registry,
)
from moe_offload_lab.traces.errors import ConfigError

ORACLE_POLICIES = {"belady", "oracle-prefetch", "oracle-belady"}


def test_every_kind_is_registered() -> None:
    assert set(PREDICTORS.names()) >= {"none", "oracle", "popularity", "history",
                                       "gate-lookahead", "similarity"}
    assert set(REPLACEMENTS.names()) >= {"lru", "lru-per-layer", "lfu", "fifo", "lifo",
                                         "freq-distance", "confidence", "belady"}
    assert set(PLANNERS.names()) >= {"on-demand", "next-layer", "lookahead", "cost-aware"}
    assert set(PLACEMENTS.names()) >= {"gpu", "fiddler"}
    assert set(ADMISSIONS.names()) >= {"always", "min-count"}


def test_every_abstract_method_is_documented() -> None:
    from moe_offload_lab.policies.admission.base import Admission
    from moe_offload_lab.policies.placement.base import PlacementRule
    from moe_offload_lab.policies.planners.base import Planner
    from moe_offload_lab.policies.predictors.base import Predictor
    from moe_offload_lab.policies.replacement.base import ReplacementRule

    for cls in (Policy, Predictor, Planner, ReplacementRule, PlacementRule, Admission):
        assert cls.__doc__
        for name in cls.__abstractmethods__:
            doc = getattr(cls, name).__doc__
            assert doc and len(doc.strip()) > 20, f"{cls.__name__}.{name} lacks a docstring"


@pytest.mark.parametrize("name", available_policies())
def test_bundled_configs_build(name: str) -> None:
    config = load_policy_config(name)
    assert config.name == name
    assert config.description
    policy = load_policy(name)
    assert isinstance(policy, ComposedPolicy)
    assert policy.is_oracle == (name in ORACLE_POLICIES)
    if policy.is_oracle:
        text = f"{config.name} {config.description}".lower()
        assert "oracle" in text or "upper bound" in text
    assert policy.decision_cost.seconds(1) >= 0


def test_oracle_components_are_labelled() -> None:
    oracles = []
    for registry in (PREDICTORS, REPLACEMENTS):
        for name in registry.names():
            cls = registry.get(name)
            if cls.is_oracle:
                oracles.append(name)
                module = importlib.import_module(cls.__module__)
                text = f"{cls.__doc__} {module.__doc__}".lower()
                assert "upper bound" in text and "oracle" in text, name
    assert set(oracles) == {"oracle", "belady"}
    replay = build_policy({"name": "p", "predictor": {"name": "popularity", "source": "replay"}})
    assert replay.is_oracle and replay.predictor.is_oracle


def test_library_covers_the_issue() -> None:
    names = set(available_policies())
    assert {"lru", "lfu", "fifo", "lifo", "belady", "lru-per-layer", "gate-lookahead",
            "mixtral-offloading", "moe-infinity", "prophet", "prescope", "fiddler",
            "oracle-prefetch"} <= names


@pytest.mark.parametrize("config, message", [
    ({"name": "x", "predictor": {"name": "crystal-ball"}}, "unknown predictor"),
    ({"name": "x", "replacement": {"name": "lru", "size": 3}}, "unknown parameter"),
    ({"name": "x", "planner": {"name": "next-layer", "n": "two"}}, "must be an integer"),
    ({"name": "x", "planner": {"name": "lookahead", "min_confidence": 2.0}}, "min_confidence"),
    ({"name": "x", "horizon": 0}, "horizon"),
    ({"name": "x", "colour": "red"}, "unknown key"),
    ({"predictor": {"name": "none"}}, "'name'"),
    ({"name": "x", "placement": 3}, "placement"),
    ({"name": "x", "decision_cost": {"where": "tpu"}}, "where"),
])
def test_bad_configs_raise_config_error(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_policy(config)


def test_unknown_policy_name() -> None:
    with pytest.raises(ConfigError, match="unknown policy"):
        load_policy("no-such-policy")


def test_config_from_yaml_path_and_defaults(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nreplacement: {name: lfu}\n")
    policy = load_policy(str(path))
    assert policy.replacement.name == "lfu"
    assert policy.predictor.name == "none" and policy.planner.name == "on-demand"
    assert policy.placement.name == "gpu" and policy.admission.name == "always"
    assert load_policy_config(str(path)).to_dict()["replacement"] == {"name": "lfu"}


def test_omegaconf_node_accepted() -> None:
    from omegaconf import OmegaConf

    node = OmegaConf.create({"name": "n", "replacement": {"name": "fifo"}})
    assert build_policy(node).replacement.name == "fifo"


def test_registry_rejects_duplicates() -> None:
    registry = Registry("thing", "moe_offload_lab.policies.predictors")

    @registry.register("a")
    class A:
        pass

    with pytest.raises(ValueError):
        @registry.register("a")
        class B:
            pass
