"""Bad inputs end with one clear ConfigError line; the CLI exits 2 without a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_testing import routed_trace, small_spec  # noqa: E402
from moe_offload_lab.policies.balancing import load_balancer  # noqa: E402
from moe_offload_lab.sim.cluster import build_trace, load_cluster, simulate_cluster  # noqa: E402
from moe_offload_lab.sim.cluster.cli import main  # noqa: E402
from moe_offload_lab.traces.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_trace():
    return routed_trace(small_spec(), requests=1, tokens_per_request=16)


@pytest.mark.parametrize("config,message", [
    ({"cluster": "nope"}, "unknown cluster 'nope'"),
    ({"balance": "nope"}, "unknown balance 'nope'"),
    ({"cluster": {"base": "h100x8-nvswitch", "redundant_slots": -1}}, "redundant_slots"),
    ({"cluster": {"base": "h100x8-nvswitch", "ranks": 12}}, "not a multiple"),
    ({"cluster": {"base": "h100x8-nvswitch", "ranks": 128, "ranks_per_node": 8}},
     "fewer than the 128 ranks"),
    ({"cluster": {"base": "h100x8-nvswitch", "nvlink_gb_per_s": 0}}, "nvlink_gb_per_s"),
    ({"cluster": {"base": "h100x8-nvswitch", "gpu": "nope"}}, "unknown hardware 'nope'"),
    ({"cluster": {"base": "h100x8-nvswitch", "colour": 1}}, "unknown field(s) colour"),
    ({"balance": {"name": "probe", "predictor": "crystal-ball"}}, "predictor must be one of"),
    ({"balance": {"policy": "eplb", "period": 0}}, "period must be at least 1"),
    ({"balance": {"name": "eplb", "speed": 3}}, "unknown parameter(s) speed"),
    ({"balance": {"policy": "nope"}}, "unknown balance policy 'nope'"),
    ({"batch": 0}, "batch must be a positive integer"),
    ({"colour": 1}, "cluster config: unknown key(s) colour"),
    ({"model": "deepseek-v3"}, "the trace is for model 'olmoe-1b-7b'"),
])
def test_bad_config_raises_one_line(tiny_trace, config: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        simulate_cluster(config, trace=tiny_trace)
    text = str(info.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("trace,message", [
    ({"preset": "nope"}, "unknown trace 'nope'"),
    ({"preset": "olmoe-1b-7b", "colour": 1}, "unknown key(s) colour"),
    ({"preset": "olmoe-1b-7b", "tokens": 50, "volatile": {"burst_every": 5, "burst_len": 9}},
     "burst_len"),
    ({"preset": "olmoe-1b-7b", "tokens": 50, "volatile": {"shift_every": 0}}, "shift_every"),
])
def test_bad_trace_config(trace: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_trace(trace)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bundled_configs_load() -> None:
    for name in ("h100x8-nvswitch", "h200x8-nvswitch", "h100x16-2nodes-ib"):
        cluster = load_cluster(name)
        assert cluster.hardware().name == cluster.gpu
    for name in ("static", "eplb", "probe", "probe-gate", "probe-oracle", "probe-history"):
        assert load_balancer(name) is not None
    with pytest.raises(ConfigError, match="needs checkpoint"):
        load_balancer({"name": "probe", "checkpoint": ""})  # a checkpoint or auto
    assert load_balancer("probe-oracle").is_oracle


def test_cli_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--balance", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    # the prefix names the command the user ran (there is no moe-cluster command)
    assert err.startswith("python -m moe_offload_lab.sim.cluster.cli: error: unknown balance "
                          "'nope'")
    assert "\n" not in err and "Traceback" not in err


def test_cli_small_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ep"
    code = main(["--model", "olmoe-1b-7b", "--balance", "probe-gate", "--tokens", "300",
                 "--batch", "4", "--max-steps", "3", "--shift-every", "2", "-o", str(out)])
    assert code == 0
    assert (out / "summary.json").is_file() and (out / "timeline.json").is_file()
    assert "imbalance_after_mean" in capsys.readouterr().out
