"""Assemble and write a calibrated hardware profile.

The YAML carries the :class:`sim.hardware.HardwareProfile` fields and a ``measured:`` block in
exactly :mod:`sim.measured`'s layout (``model``, ``h2d_copy``, ``gpu_expert``, ``cpu_expert``,
``layer_other``, ``provenance``). Every other table (attention against batch and context, the
router, policy decision times, peak bandwidth) goes into ``measured.provenance`` (free-form, the
simulator ignores it) and into the ``<name>.calibration.json`` sidecar beside the YAML.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.traces.atomic import write_text
from moe_offload_lab.traces.spec import ModelSpec

HEADER = ("# Calibrated by `moe-hw calibrate` (hw/calibrate). The measured tables replace the\n"
          "# roofline in the simulator (sim/measured.py); the sidecar .calibration.json holds\n"
          "# every table. Re-run the calibration rather than editing these numbers.\n")


def base_fields(profile: HardwareProfile) -> dict[str, Any]:
    """The profile's fields without ``measured`` (a starting point to override)."""
    data = dataclasses.asdict(profile)
    data.pop("measured", None)
    return data


def sidecar_path(profile_path: str | Path) -> Path:
    """``<stem>.calibration.json`` beside the profile YAML."""
    path = Path(profile_path)
    return path.with_name(f"{path.stem}.calibration.json")


def check_loads(data: dict[str, Any], spec: ModelSpec, where: str) -> list[str]:
    """Build the profile and a :class:`ComputeModel` as the simulator will; returns
    ``measured_used`` (raises ConfigError when the simulator would refuse the profile)."""
    profile = HardwareProfile.from_dict(data, where)
    return ComputeModel(spec, profile).measured_used


def write_profile(path: str | Path, data: dict[str, Any], sidecar: dict[str, Any]) -> list[Path]:
    """Write the YAML and its sidecar JSON, each atomically; returns both paths."""
    text = HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    yaml_path = write_text(path, text)
    json_path = write_text(sidecar_path(path), json.dumps(sidecar, indent=2, default=str))
    return [yaml_path, json_path]
