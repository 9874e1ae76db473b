"""Hardware profiles: every bundled one loads; bad figures are ConfigErrors."""

from __future__ import annotations

import pytest
from moe_offload_lab.sim.hardware import HardwareProfile, available_hardware, load_hardware
from moe_offload_lab.traces.errors import ConfigError

EXPECTED = {"t4-pcie3", "rtx3060-pcie3", "rtx3080-mobile", "rtx3090", "rtx-a5000", "rtx4090",
            "l40s", "a100-80gb-sxm", "a100-80gb-pcie", "h100-pcie", "h100-sxm", "h200"}


def test_bundled_profiles_load() -> None:
    assert EXPECTED <= set(available_hardware())
    for name in EXPECTED:
        hw = load_hardware(name)
        assert hw.name == name
        assert hw.link_bytes_per_s < hw.hbm_bytes_per_s
        assert hw.measured is None
    assert load_hardware("rtx4090").link_gb_per_s == 23.9


@pytest.mark.parametrize("field,value", [("link_gb_per_s", 0), ("hbm_gb_per_s", -1.0),
                                         ("gpu_tflops", float("nan")), ("copy_latency_s", -1e-6),
                                         ("host_dram_gb_per_s", "fast")])
def test_bad_figures_raise(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        load_hardware("rtx4090").with_overrides(**{field: value})


def test_unknown_fields_and_names() -> None:
    with pytest.raises(ConfigError, match="unknown hardware"):
        load_hardware("no-such-gpu")
    with pytest.raises(ConfigError, match="unknown field"):
        HardwareProfile.from_dict({"name": "x", "gpu_mem_gib": 1, "gpu_tflops": 1,
                                   "hbm_gb_per_s": 1, "link_gb_per_s": 1, "warp": 9})
    with pytest.raises(ConfigError, match="missing"):
        HardwareProfile.from_dict({"name": "x"})
