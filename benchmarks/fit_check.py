"""The held-out check of ``moe-trace fit`` on real routing, as the table in traces/README.md.

    python benchmarks/fit_check.py [--trace flame-moe-290m] [--seeds 4] [--seed 0]

Fits the generator on the first half of a bundled real trace (default: FLAME-MoE-290M, 2,048
tokens), generates ``--seeds`` traces as long as the second half and prints, per statistic of
``moe-trace compare``, the real second half, the synthetic mean, the real first half (how much two
real halves differ) and the tolerance ``tests/traces/test_fit.py`` asserts.
"""

from __future__ import annotations

import argparse
import time

from moe_offload_lab.traces import bundled
from moe_offload_lab.traces.compare import comparison_rows
from moe_offload_lab.traces.fit import holdout_check

TOLERANCES = {  # row label prefix -> tolerance asserted by tests/traces/test_fit.py
    "LRU hit ratio": "0.04", "Belady hit ratio": "0.03", "  ratio to chance": "",
    "top-1 transition accuracy": "0.03", "hottest expert / even share, mean": "0.35",
    "entropy": "0.06",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default="flame-moe-290m")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    check = holdout_check(bundled.load(args.trace), seeds=args.seeds, seed=args.seed)
    rows = comparison_rows([check["second"], check["synthetic"], check["first"]])
    print("| statistic | real, 2nd half | synthetic (fit on 1st half) | real, 1st half | "
          "asserted within |")
    print("|---|---:|---:|---:|---:|")
    overlap_rows = 0
    for label, values in rows:
        tolerance = next((t for prefix, t in TOLERANCES.items() if label.startswith(prefix)), "")
        if label == "  ratio to chance":
            overlap_rows += 1
            tolerance = "0.10" if overlap_rows == 1 else ""  # the adjacent overlap ratio only
        cells = ["-" if v is None else f"{v:.3f}" for v in values]
        print(f"| {label.strip()} | " + " | ".join(cells) + f" | {tolerance} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
