"""Fit the mixtral-offloading implementation profile on Table 2's no-cache column, then predict.

mixtral-offloading's Table 2 (arXiv 2312.17238; tokens/s, Mixtral-8x7B, batch 1) has, per GPU
(A100 SXM, T4 PCIe 3) and expert precision (2-bit, 3-bit), three algorithms: full (LRU and
speculative next-layer prefetch), no-prefetch (LRU only) and no-cache. This script fits the two
figures of ``conf/system/mixtral-offloading.yaml`` that no source gives, the host time per layer
(``host_layer_s``, any GPU) and the HQQ Triton kernels' dequantization throughput
(``dequant_gb_per_s`` of quantized weights on the A100, scaled by memory bandwidth on the T4),
on the no-cache
column ONLY (four figures), by least squares on log tokens/s over a grid refined around its best
point; every other figure of the profile stays as the YAML states it. It then runs the bundled
experiment (``moe-sim experiment=mixtral-offloading``) on both GPUs and both precisions with the
fitted profile and prints the published and simulated tokens/s and the speedups over no-cache,
so the full and no-prefetch columns are predictions.

    python benchmarks/fit_mixtral_offloading.py [--tokens 3000] [--fit-tokens 400]

It changes no file: the fitted figures it prints are the ones the YAML states.
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from moe_offload_lab.sim.cli import compose, run_config
from moe_offload_lab.sim.compare import published_figures, run_comparison, run_configs
from moe_offload_lab.sim.run import RunConfig, simulate
from moe_offload_lab.traces.synthetic import generate

GPUS = ("a100-80gb-sxm", "t4-pcie3")
BITS = {"2-bit": 0.325, "3-bit": 0.45}
# the fitted figures and the range searched (log scale)
RANGES = {"host_layer_s": (1e-4, 2e-2), "dequant_gb_per_s": (3.0, 3e3),
          "layer_overhead_s": (1e-5, 1e-2)}
FITTED = ("host_layer_s", "dequant_gb_per_s")


def experiment(hardware: str, bytes_per_param: float, tokens: int) -> RunConfig:
    """The bundled experiment's composed config for one cell of the table."""
    return run_config(compose(["experiment=mixtral-offloading", f"hardware={hardware}",
                               f"model.expert_bytes_per_param={bytes_per_param}",
                               f"trace.tokens={tokens}"]))


def with_figures(cfg: RunConfig, figures: dict[str, float]) -> RunConfig:
    """``cfg`` with some figures of its implementation profile replaced."""
    return replace(cfg, system={**cfg.system, **figures})


def no_cache_error(figures: dict[str, float], cells: list[tuple[RunConfig, float]]) -> float:
    """Sum of squared log errors of the no-cache tokens/s over the cells."""
    total = 0.0
    for cfg, published in cells:
        simulated = simulate(with_figures(cfg, figures)).summary["tokens_per_s"]
        total += math.log(simulated / published) ** 2
    return total


def fit(cells: list[tuple[RunConfig, float]], fitted: tuple[str, ...] = FITTED,
        rounds: int = 5, points: int = 6) -> tuple[dict[str, float], float]:
    """Grid search of ``fitted`` on log scales, refined ``rounds`` times around the best point."""
    low = {k: RANGES[k][0] for k in fitted}
    high = {k: RANGES[k][1] for k in fitted}
    best: tuple[float, dict[str, float]] | None = None
    for _ in range(rounds):
        grids = [[low[k] * (high[k] / low[k]) ** (i / (points - 1)) for i in range(points)]
                 for k in fitted]
        for values in itertools.product(*grids):
            figures = dict(zip(fitted, values, strict=True))
            err = no_cache_error(figures, cells)
            if best is None or err < best[0]:
                best = (err, figures)
        assert best is not None
        for k in fitted:  # zoom: one grid step either side of the best point
            step = (high[k] / low[k]) ** (1 / (points - 1))
            low[k], high[k] = best[1][k] / step, best[1][k] * step
    assert best is not None
    return best[1], best[0]


def predict(figures: dict[str, float], tokens: int) -> list[dict[str, Any]]:
    """Run the experiment in every cell with the fitted figures."""
    rows = []
    for hardware in GPUS:
        for bits, bpp in BITS.items():
            cfg = with_figures(experiment(hardware, bpp, tokens), figures)
            table, _, _ = run_comparison(cfg)
            published = published_figures(cfg) or {}
            for row in table.itertuples(index=False):
                rows.append({"gpu": hardware, "experts": bits, "label": row.label,
                             "published": published.get(row.label),
                             "simulated": row.tokens_per_s, "speedup": row.speedup,
                             "published_speedup": getattr(row, "published_speedup", None)})
    return rows


def main() -> None:
    """Fit on the no-cache column, print the fit, then every cell's prediction."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=3000, help="trace tokens of the predictions")
    parser.add_argument("--fit-tokens", type=int, default=300, help="trace tokens of the fit")
    parser.add_argument("--fit", nargs="+", default=list(FITTED), choices=sorted(RANGES),
                        help="the profile's figures to fit (the others stay as the YAML says)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="try other values of the profile's fixed figures")
    args = parser.parse_args()
    fixed = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    t0 = time.perf_counter()
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.parquet"  # the same routing for every cell, made once
        for hardware in GPUS:
            for bpp in BITS.values():
                cfg = experiment(hardware, bpp, args.fit_tokens)
                if not trace.exists():
                    generate(cfg.model["name"], tokens=args.fit_tokens,
                             seed=int(cfg.trace.get("seed") or 0)).save(trace)
                no_cache = with_figures(replace(run_configs(cfg)["no-cache"], compare=None,
                                                trace={"path": str(trace)}), fixed)
                cells.append((no_cache, published_figures(cfg)["no-cache"]))
        figures, err = fit(cells, tuple(args.fit))
    print(f"fitted on the no-cache column in {time.perf_counter() - t0:.0f} s "
          f"(rms log error {math.sqrt(err / len(cells)):.3f}):")
    for name in args.fit:
        print(f"  {name}: {figures[name]:.4g}")
    rows = predict({**fixed, **figures}, args.tokens)
    print(f"\n{'gpu':<15}{'experts':<8}{'label':<13}{'published':>10}{'simulated':>10}"
          f"{'speedup pub':>12}{'speedup sim':>12}{'error':>8}")
    errors = []  # the predicted speedups' relative errors (no-cache is 1 by construction)
    for r in rows:
        pub_s, sim_s = r["published_speedup"], r["speedup"]
        error = f"{sim_s / pub_s - 1:+.1%}" if pub_s else "-"
        if pub_s and r["label"] != "no-cache":
            errors.append(sim_s / pub_s - 1)
        print(f"{r['gpu']:<15}{r['experts']:<8}{r['label']:<13}{r['published']:>10.3f}"
              f"{r['simulated']:>10.3f}{pub_s:>12.3f}{sim_s:>12.3f}{error:>8}")
    if errors:
        sizes = sorted(abs(e) for e in errors)
        median = (sizes[(len(sizes) - 1) // 2] + sizes[len(sizes) // 2]) / 2
        worst = max(errors, key=abs)
        print(f"\npredicted speedups within 15% of the table's: "
              f"{sum(size <= 0.15 for size in sizes)} of {len(sizes)} "
              f"(median absolute error {median:.1%}, worst {worst:+.1%})")


if __name__ == "__main__":
    main()
