"""``moe-sim`` as a Hydra app: --version, --cfg, --info, --help; policy files by path,
``hydra.searchpath`` kept by the pre-run check (also in sweeps and in ``moe-tune export``'s
printed command); the run summary labels where the decision cost came from."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from moe_offload_lab.sim.cli import check, compose, main
from moe_offload_lab.sim.cli_args import policy_file_overrides, split_flags
from moe_offload_lab.sim.tune.export import moe_sim_command
from moe_offload_lab.traces.catalog import conf_dir

HISTORY = conf_dir() / "policy" / "history.yaml"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    data = yaml.safe_load(HISTORY.read_text()) | {"name": "my-history"}
    data["planner"]["min_confidence"] = 0.2
    path = tmp_path / "mine" / "my-history.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("moe-sim 0.")


def test_cfg_job_prints_the_composed_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cfg", "job", "policy=prophet", "cache.fraction=0.25"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["policy"]["name"] == "prophet" and cfg["cache"]["fraction"] == 0.25
    assert main(["--cfg", "job"]) == 0  # no overrides: what plain `moe-sim` runs
    assert yaml.safe_load(capsys.readouterr().out)["compare"]["baseline"] == "on-demand"
    assert main(["--cfg", "all", "--package", "policy", "policy=lru"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "lru"  # the policy package
    assert main(["--cfg", "job", "--package", "no.such.package", "policy=lru"]) == 2


def test_info_and_help(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Hydra prints --info through logging, which other tests reconfigure: a fresh process
    done = subprocess.run([sys.executable, "-m", "moe_offload_lab.sim.cli", "--info",
                           "searchpath", f"hydra.searchpath=[file://{tmp_path}]"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and f"file://{tmp_path}" in done.stdout
    assert main(["--info"]) == 0  # a bare --info (Hydra's summary of everything)
    capsys.readouterr()
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: moe-sim" in out and "== Configuration groups ==" in out
    assert "policy: belady" in out and "hardware: a100-80gb-pcie" in out
    assert main(["--hydra-help"]) == 0
    assert "--multirun" in capsys.readouterr().out


def test_cfg_with_a_bad_override_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cfg", "job", "policy=no-such-policy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-sim: error:") and "policy/no-such-policy" in err
    assert len(err.splitlines()) == 1


def test_split_flags() -> None:
    flags, rest = split_flags(["--cfg", "job", "a=1", "--info", "searchpath", "-m", "b=2"])
    assert flags == ["--cfg", "job", "--info", "searchpath", "-m"] and rest == ["a=1", "b=2"]
    assert split_flags(["--info", "x=1"]) == (["--info"], ["x=1"])


def test_policy_file_by_path(policy_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([f"policy={policy_file}", "trace.tokens=300", f"out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "my-history"
    # the same name as a bundled config gets a name of its own, never the bundled file
    clash = tmp_path / "lru.yaml"
    clash.write_text(policy_file.read_text())
    assert compose([f"policy={clash}"]).policy.name == "my-history"
    rewritten = policy_file_overrides([f"policy={clash}"])
    assert rewritten[0].startswith("policy=lru-") and rewritten == policy_file_overrides(
        rewritten)  # idempotent
    assert main([f"policy={tmp_path / 'none.yaml'}", f"out={out}"]) == 2


def test_searchpath_reaches_every_job_of_a_sweep(policy_file: Path, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "policy").mkdir(parents=True)
    shutil.copy(policy_file, conf / "policy" / "theirs.yaml")
    sweep = tmp_path / "sweep"
    assert main(["--multirun", "hydra/launcher=basic", "policy=theirs,lru",
                 f"hydra.searchpath=[file://{conf}]", "trace.tokens=200", f"out={sweep}"]) == 0
    table = pd.read_csv(sweep / "sweep.csv")
    assert table["policy"].tolist() == ["my-history", "lru"]
    # a file by path in a sweep, next to a user search path: one search path holds both
    shutil.copy(policy_file, conf / "policy" / "my-history.yaml")  # their own, same stem
    overrides = policy_file_overrides([f"policy={policy_file},theirs",
                                       f"hydra.searchpath=[file://{conf}]"])
    assert re.fullmatch(r"policy=my-history-[0-9a-f]{6},theirs", overrides[0])
    assert overrides[1].startswith(f"hydra.searchpath=['file://{conf}','file://")
    assert len(check(overrides)) == 2  # every job composes and prepares


def test_exported_commands_run(policy_file: Path, tmp_path: Path) -> None:
    for folder in (tmp_path / "conf" / "policy", tmp_path / "elsewhere"):
        folder.mkdir(parents=True)
        shutil.copy(policy_file, folder / "tuned.yaml")
        command = moe_sim_command("tuned", ["trace.tokens=200"], folder).split()
        assert command[0] == "moe-sim" and "#" not in " ".join(command)
        args = [a.strip("'") for a in command[1:]]
        assert main([*args, f"out={tmp_path / folder.name}"]) == 0
        summary = json.loads((tmp_path / folder.name / "summary.json").read_text())
        assert summary["policy"] == "my-history"


def test_summary_labels_the_decision_cost(tmp_path: Path) -> None:
    assert main(["policy=history", "trace.tokens=200", f"out={tmp_path / 'a'}"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["decision_cost_source"] == "measured"
    assert summary["decision_cost_fixed_us"] > 0
    assert summary["decision_cost_table"].endswith("default.yaml")
    assert main(["policy=history", "trace.tokens=200", f"out={tmp_path / 'b'}",
                 "+policy.decision_cost={where: cpu, fixed_s: 5.0e-6, per_token_s: 0}"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["decision_cost_source"] == "declared"
    assert summary["decision_cost_fixed_us"] == pytest.approx(5.0)
