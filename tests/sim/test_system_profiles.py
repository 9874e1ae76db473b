"""Implementation profiles (sim/system.py, conf/system): every bundled one loads, states where its
figures come from, and a broken one is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from moe_offload_lab.sim.cli import main
from moe_offload_lab.sim.system import SystemProfile, available_systems, load_system
from moe_offload_lab.traces.catalog import conf_dir
from moe_offload_lab.traces.errors import ConfigError

BUNDLED = ["cuda-graph", "fused", "hf-accelerate", "mixtral-offloading", "moe-infinity",
           "roofline"]


def test_the_bundled_profiles() -> None:
    assert available_systems() == BUNDLED
    for name in BUNDLED:
        profile = load_system(name)
        assert profile.name == name and len(profile.provenance) > 40, name
    fitted = load_system("mixtral-offloading").provenance
    assert "no-cache" in fitted and "fit_mixtral_offloading.py" in fitted


def _yaml(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((conf_dir() / "system" / "fused.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"host_layer_s": -1e-3}, "host_layer_s must be a number >= 0"),
    ({"copy_sync_s": None}, "missing field(s) copy_sync_s"),
    ({"kernels_per_layer": 2.5}, "kernels_per_layer must be an integer"),
    ({"overlap_copies": "yes"}, "overlap_copies must be true or false"),
    ({"overlap_copies": False}, "compute_while_copying needs overlap_copies"),
    ({"reference_gpu": "no-such-gpu", "layer_overhead_s": 1e-4}, "unknown hardware"),
    ({"speed": 3}, "unknown field(s) speed"),
])
def test_a_broken_profile_is_one_clear_error(tmp_path: Path, changes: dict,
                                             message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_system(str(_yaml(tmp_path, **changes)))
    assert message in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("system=no-such-runtime", "no-such-runtime"),
    ("system.host_layer_s=-0.1", "host_layer_s must be a number >= 0"),
    ("~system.copy_sync_s", "missing field(s) copy_sync_s"),
])
def test_the_command_line_exits_2(override: str, message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([override, "trace.tokens=50", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-sim: error:") and message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_overrides_are_checked_again() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        SystemProfile.ideal().with_overrides(nope=1)
    with pytest.raises(ConfigError, match=">= 0"):
        SystemProfile.ideal().with_overrides(copy_sync_s=-1.0)
