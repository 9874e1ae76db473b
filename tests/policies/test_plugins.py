"""Plug-in components: ``_target_`` import paths (dotted, ``module:Class``, ``file.py:Class``),
entry points of installed distributions, and one clear error line for everything that fails."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from moe_offload_lab.policies.config import build_policy, load_policy_config
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.registry import PREDICTORS, REPLACEMENTS
from moe_offload_lab.traces.errors import ConfigError
from policy_testing import random_trace

# a replacement rule of a user's own: evicts the resident key with the highest id (a real, if
# odd, rule), with one parameter
RULE = '''
from dataclasses import dataclass

from moe_offload_lab.policies.replacement.base import ReplacementRule


class HighestFirst(ReplacementRule):
    """Evicts the resident key with the highest id."""

    @dataclass(frozen=True)
    class Params:
        """``skip``: keys never evicted while others are evictable."""

        skip: tuple[int, ...] = ()

    def reset(self, spec, capacity_slots, trace=None, schedule=None):
        super().reset(spec, capacity_slots, trace, schedule)
        self.resident = set()

    def on_access(self, ctx):
        pass

    def on_insert(self, key):
        self.resident.add(key)

    def on_remove(self, key):
        self.resident.discard(key)

    def victims(self, view, need, layer, keep, wanted, out):
        pool = [k for k in self.resident if k not in keep and k not in view.in_flight
                and (layer < 0 or k // self.num_experts == layer)]
        ranked = sorted(pool, key=lambda k: (k in self.params.skip, k in wanted, -k))
        out.extend(ranked[:need])
'''


def _policy(replacement: dict) -> dict:
    return {"name": "mine", "replacement": replacement}


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "site" / "my_rules"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "highest.py").write_text(RULE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("my_rules")]:
        del sys.modules[name]


@pytest.mark.parametrize("target", ["my_rules.highest.HighestFirst",
                                    "my_rules.highest:HighestFirst"])
def test_target_builds_and_runs(plugin_dir: Path, target: str) -> None:
    policy = build_policy(_policy({"_target_": target, "skip": [3]}))
    assert type(policy.replacement).__name__ == "HighestFirst"
    assert policy.replacement.params.skip == (3,)  # parameters checked and coerced like built-ins
    assert policy.replacement.name == target
    trace = random_trace(1, 64, 2, 8, 2)
    result = evaluate(trace, policy, 6)
    baseline = evaluate(trace, build_policy(_policy({"name": "lru"})), 6)
    assert result.cache.accesses == baseline.cache.accesses
    assert 0 < result.cache.hits < result.cache.accesses


def test_target_from_a_python_file(plugin_dir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rule.py").write_text(RULE)
    monkeypatch.chdir(tmp_path)
    policy = build_policy(_policy({"_target_": "rule.py:HighestFirst"}))
    assert type(policy.replacement).__name__ == "HighestFirst"
    again = build_policy(_policy({"_target_": str(tmp_path / "rule.py") + ":HighestFirst"}))
    assert type(again.replacement) is type(policy.replacement)  # loaded once per process


@pytest.mark.parametrize(("target", "message"), [
    ("no_such_pkg.Rule", "does not import: no module named 'no_such_pkg' (install its package, "
                         "or put the folder holding it on PYTHONPATH)"),
    ("my_rules.highest.Missing", "module 'my_rules.highest' has no attribute 'Missing'"),
    ("my_rules.highest.ReplacementRule.victims", "is not a replacement"),
    ("Rule", "expected 'package.module.Class'"),
    ("missing.py:Rule", "no such file 'missing.py'"),
    ("moe_offload_lab.policies.predictors.history.HistoryPredictor", "is not a replacement"),
])
def test_bad_targets_are_one_line(plugin_dir: Path, target: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_policy(_policy({"_target_": target}))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_plugin_code_that_fails_names_its_line(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.py").write_text("import math\nx = 1 / 0\n")
    (tmp_path / "typo.py").write_text("def f(:\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"ZeroDivisionError: division by zero \(.*broken.py:2\)"):
        build_policy(_policy({"_target_": "broken.py:Rule"}))
    with pytest.raises(ConfigError, match=r"SyntaxError: .*typo.py:1\)"):
        build_policy(_policy({"_target_": "typo.py:Rule"}))


def test_name_and_target_together_is_an_error(plugin_dir: Path) -> None:
    with pytest.raises(ConfigError, match="both 'name' and '_target_'"):
        build_policy(_policy({"name": "lru", "_target_": "my_rules.highest.HighestFirst"}))
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_policy(_policy({"_target_": "my_rules.highest.HighestFirst", "bogus": 1}))


def _install_dist(site: Path, group: str, name: str, value: str) -> None:
    """What pip writes for an installed distribution declaring one entry point."""
    info = site / "my_rules_dist-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rules-dist\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")


def test_entry_point_names_a_component(plugin_dir: Path) -> None:
    _install_dist(plugin_dir / "site", "moe_offload_lab.replacements", "highest-first",
                  "my_rules.highest:HighestFirst")
    assert "highest-first" in REPLACEMENTS.plugin_entries()
    entry = REPLACEMENTS.plugin_entries()["highest-first"]
    assert entry.distribution == "my-rules-dist 1.2"
    policy = build_policy(_policy({"name": "highest-first", "skip": [1, 2]}))
    assert type(policy.replacement).__name__ == "HighestFirst"
    with pytest.raises(ConfigError, match=r"unknown replacement 'nope'; available: .*lru.*; "
                                          r"plug-ins: highest-first \(a class of your own"):
        build_policy(_policy({"name": "nope"}))


def test_broken_entry_point_is_one_line(plugin_dir: Path) -> None:
    _install_dist(plugin_dir / "site", "moe_offload_lab.predictors", "gone",
                  "my_rules.nowhere:Gone")
    with pytest.raises(ConfigError, match=r"predictor 'gone' \(entry point of my-rules-dist "
                                          r"1.2\) does not import: no module named "
                                          r"'my_rules.nowhere'"):
        PREDICTORS.build({"name": "gone"})


def test_policy_yaml_with_target_validates(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        name: p
        predictor: {_target_: some.module.Predictor, decay: 0.5}
        """))
    config = load_policy_config(path)
    assert config.predictor == {"_target_": "some.module.Predictor", "decay": 0.5}
    path.write_text("name: p\npredictor: {decay: 0.5}\n")
    with pytest.raises(ConfigError, match="predictor must be a mapping with a 'name' \\(or a "
                                          "'_target_' import path\\)"):
        load_policy_config(path)
