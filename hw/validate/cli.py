"""``moe-hw validate``: the simulator against the executor on a matrix of runs.

    moe-hw validate profile=h100-lab                          (the calibrated profile's name)
    moe-hw validate device=cpu model=tiny-moe-stdlib layers=null -o outputs/hw/val-cpu  (CPU twin)
    moe-hw validate policies=[lru,presched] cache.fractions=[0.25,0.5] batches=[1,16]

Arguments are Hydra overrides of ``conf/hw/validate.yaml``. Every cell (policy x cache size x
batch) runs in the executor and in the simulator with the calibrated profile (``profile=null``:
a quick calibration first, written to ``<out>/profile.yaml``). Writes validation.csv,
validation.png, validation.md, summary.json and timeline.json (both timelines, pid 0 hardware,
pid 1 simulator) into ``out`` (``out=DIR`` or ``-o DIR``). On the CPU twin this checks the
pipeline, not GPU accuracy. User errors print one line on stderr and exit with 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from moe_offload_lab.traces.errors import run_cli

PROG = "moe-hw validate"


def _run(args: list[str]) -> int:
    from moe_offload_lab.hw.calibrate.cli import compose_hw, output_override
    from moe_offload_lab.hw.validate.matrix import ValidationConfig
    from moe_offload_lab.hw.validate.run import validate

    cfg = ValidationConfig.from_dict(compose_hw("validate", output_override(args)))
    result = validate(cfg)
    t, o = result.table, result.overall
    shown = t[["policy", "cache", "slots", "batch", "hw_step_ms_mean", "sim_step_ms_mean",
               "rel_err_step_ms_mean", "hw_step_ms_p99", "sim_step_ms_p99",
               "rel_err_step_ms_p99"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"median |error| of mean step latency: {o['median_abs_rel_err_step_ms_mean']:.1%} "
          f"(worst {o['max_abs_rel_err_step_ms_mean']:.1%}); of p99: "
          f"{o['median_abs_rel_err_step_ms_p99']:.1%}")
    print(f"wrote {', '.join(str(p) for p in result.paths)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-hw validate``; returns the exit status."""
    return run_cli(PROG, __doc__, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
