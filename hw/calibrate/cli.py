"""``moe-hw calibrate``: measure a device and write a calibrated hardware profile.

    moe-hw calibrate                                         cuda when available, else the CPU
    moe-hw calibrate base_profile=h100-sxm name=h100-lab     keep h100-sxm's datasheet figures
    moe-hw calibrate device=cpu model=tiny-moe-stdlib sizes_mb=[1,4,16] out=cpu.yaml

Arguments are Hydra overrides of ``conf/hw/calibrate.yaml``. Writes
``conf/hardware/<name>.yaml`` (or ``out=PATH``, also ``-o PATH``) and
``<name>.calibration.json`` beside it, both atomically, and prints the figures. On the CPU twin
(device=cpu) the "device" is host memory: the copy and compute tables are host figures, labelled
as such in the profile's provenance. User errors print one line on stderr and exit with 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from moe_offload_lab.traces.errors import ConfigError, run_cli

PROG = "moe-hw calibrate"


def compose_hw(config_name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """``conf/hw/<config_name>.yaml`` with Hydra overrides, as a plain dict (errors: one line)."""
    from moe_offload_lab.traces.catalog import conf_dir
    from moe_offload_lab.traces.hydra_compose import compose_config
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = compose_config(conf_dir() / "hw", overrides, config_name=config_name)
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    assert isinstance(data, dict)
    return data


def output_override(args: list[str]) -> list[str]:
    """``-o PATH`` / ``--output PATH`` (argparse style) as the Hydra override ``out=PATH``."""
    out: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in ("-o", "--output"):
            value = next(it, None)
            if value is None:
                raise ConfigError(f"{arg} needs a path")
            out.append(f"out={value}")
        elif arg.startswith("--output="):
            out.append(f"out={arg.split('=', 1)[1]}")
        else:
            out.append(arg)
    return out


def _run(args: list[str]) -> int:
    from moe_offload_lab.hw.calibrate.run import CalibrationConfig, calibrate

    cfg = CalibrationConfig.from_dict(compose_hw("calibrate", output_override(args)))
    result = calibrate(cfg)
    prov = result.profile["measured"]["provenance"]
    measured = result.profile["measured"]
    print(f"device        {prov['device']} ({prov['device_type']}, {prov['dtype']})")
    print(f"h2d copy      {prov['h2d_fit']['gb_per_s']:.3f} GB/s fitted, "
          f"{prov['h2d_fit']['latency_s'] * 1e6:.2f} us per copy, "
          f"peak {prov['h2d_peak_gb_per_s']:.3f} GB/s ({prov['h2d_source']})")
    expert = measured["gpu_expert"]
    print(f"expert FFN    {expert['seconds'][0] * 1e3:.4f} ms at {expert['tokens'][0]} token(s), "
          f"{expert['seconds'][-1] * 1e3:.4f} ms at {expert['tokens'][-1]} "
          f"({prov['gpu_expert_measured_on']})")
    other = measured["layer_other"]
    print(f"layer other   {other['seconds'][0] * 1e3:.4f} ms at batch {other['tokens'][0]}, "
          f"context {prov['layer_other_context']}")
    for name, seconds in prov["tables"]["policy_decision_per_layer_s"].items():
        print(f"policy        {name}: {seconds * 1e6:.2f} us per layer")
    print(f"simulator     uses {', '.join(result.measured_used)} for model {measured['model']}")
    print(f"wrote {', '.join(str(p) for p in result.paths)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-hw calibrate``; returns the exit status."""
    return run_cli(PROG, __doc__, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
