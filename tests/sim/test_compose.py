"""Fast composition (traces/hydra_compose.py): remembered merges give exactly Hydra's config."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from moe_offload_lab.sim.cli import compose
from moe_offload_lab.sim.cli_args import policy_file_overrides
from moe_offload_lab.traces.catalog import conf_dir
from moe_offload_lab.traces.errors import ConfigError
from omegaconf import OmegaConf

CASES = [
    [],
    ["policy=gate-lookahead", "cache.fraction=0.25"],
    ["cache.fraction=0.25", "policy=gate-lookahead", "policy.planner.n=2"],  # value first
    ["policy=gate-lookahead", "policy.planner.n=3", "cache.fraction=0.5"],  # same groups again
    ["experiment=compare", "trace.tokens=500"],
    ["+extra.key=1", "~prefill"],
    ["workload=continuous", "workload.rate_per_s=3", "batch=4"],
    ["model=qwen3-30b-a3b", "policy=history", "policy.horizon=3"],
    ["cluster=h100x8-nvswitch", "balance=probe"],
    ["policy={name: x, predictor: {name: none}}"],  # a mapping value: not a group choice
]


def _hydra(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: " ".join(o) or "defaults")
def test_the_same_config_as_hydra(overrides: list[str]) -> None:
    expected = _hydra(overrides)
    for _ in range(2):  # composed, then from the remembered merge
        got = compose(overrides)
        assert OmegaConf.to_container(got, resolve=False) == expected
        assert list(got) == list(expected)  # key order too
        assert OmegaConf.is_struct(got)  # a typo'd key is refused later, as with Hydra


def test_a_returned_config_is_the_callers_own() -> None:
    first = compose(["policy=lru", "cache.fraction=0.25"])
    first.cache.fraction = 0.9
    OmegaConf.set_struct(first, False)
    first.junk = 1
    again = compose(["policy=lru"])
    assert again.cache.fraction == 0.5 and "junk" not in again


@pytest.mark.parametrize("bad", [["policy.nonexistent=3"], ["policy=nope"], ["nokey=1"],
                                 ["~nokey"], ["+batch=2"]])
def test_errors_are_hydras(bad: list[str]) -> None:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None), \
            pytest.raises(Exception) as hydra_error:
        hydra_compose(config_name="config", overrides=bad)
    expected = str(hydra_error.value).strip().splitlines()[0]
    compose(["policy=lru"])  # a remembered merge of the same groups exists
    for _ in range(2):
        with pytest.raises(ConfigError) as ours:
            compose(bad)
        assert str(ours.value) == expected


def test_a_policy_file_edited_on_disk_is_read_again(tmp_path: Path) -> None:
    policy = tmp_path / "mine.yaml"
    policy.write_text("name: mine\npredictor: {name: none}\nreplacement: {name: lru}\n")
    overrides = policy_file_overrides([f"policy={policy}", "cache.fraction=0.25"])
    assert compose(overrides).policy.replacement.name == "lru"
    time.sleep(0.01)  # a distinct modification time, even on coarse clocks
    policy.write_text("name: mine\npredictor: {name: none}\nreplacement: {name: fifo}\n")
    assert compose(overrides).policy.replacement.name == "fifo"


def test_a_search_path_folder_adds_groups_and_options(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "theirs.yaml").write_text(
        "name: theirs\npredictor: {name: none}\nreplacement: {name: lfu}\n")
    overrides = [f"hydra.searchpath=[file://{tmp_path}]", "policy=theirs", "batch=2"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        expected = OmegaConf.to_container(
            hydra_compose(config_name="config", overrides=overrides), resolve=False)
    for _ in range(2):
        assert OmegaConf.to_container(compose(overrides), resolve=False) == expected
