"""Expert-parallel balancing on 8 simulated H100s: static vs EPLB vs PROBE, and simulator speed.

A skewed, volatile synthetic DeepSeek-V3 trace (popularity alpha 1.0 -> 1.4, hot experts
relabelled every 8 requests and in short bursts) runs through ``sim.cluster`` with each balance
policy. Prints imbalance (max over mean rank load: mean and p99 over step-layers, before and
after balancing), prefill latency, decode throughput, replica bytes, exposed copy and decision
time, the simulator's wall and CPU time and the CPU time's ratio to the static run's (CPU time,
because on a shared machine wall time also measures the neighbours), and a checksum of each
run's per-layer results.

``--reference REF`` (default: 2c7258f, the last commit before the balancing rewrite) also runs,
in a subprocess and on the same trace, the cluster simulator and balancers of that commit (its
``sim/cluster`` and ``policies/balancing``, everything else as checked out now): their CPU-time
ratios are the "before" of this run, and static placement, an algorithm that did not change,
must give the same checksum. ``--reference none`` skips it.

Target (issue 19): every planner-driven PROBE-style run (gate prior, history, oracle) within 3x
of static's CPU time. ``probe`` (the learned predictor, trained once and cached) is printed too:
its extra cost is the predictor network's inference over every token, not planning.

    python benchmarks/bench_cluster.py [--quick] [--tokens N] [--cluster NAME] [--reference REF]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from moe_offload_lab.sim.cluster import build_trace, simulate_cluster

POLICIES = ("static", "eplb", "probe-history", "probe-gate", "probe-oracle", "probe")
PROBE_STYLE = ("probe-history", "probe-gate", "probe-oracle")  # the planner-driven runs
TARGET_RATIO = 3.0
# the per-layer table's columns before the rewrite (the checksum covers these)
CHECKSUM_COLUMNS = ("step", "layer", "phase", "tokens", "start_s", "end_s", "attn_s",
                    "dispatch_s", "expert_max_s", "expert_mean_s", "combine_s", "stall_s",
                    "imbalance_before", "imbalance_after", "max_rank_pairs", "routed_pairs",
                    "computed_pairs", "replica_copies", "a2a_bytes", "a2a_inter_bytes")
# the reference commit's balancers, with their parameters then (its conf/balance defaults)
REFERENCE_POLICIES = {"static": {"policy": "static"}, "eplb": {"policy": "eplb"},
                      "probe-history": {"policy": "probe", "predictor": "history"},
                      "probe": {"policy": "probe", "predictor": "lookahead"},
                      "probe-oracle": {"policy": "probe", "predictor": "oracle",
                                       "keep_tolerance": 0.0, "time_aware": False}}
ROOT = Path(__file__).resolve().parents[1]


def checksum(layers) -> str:  # noqa: ANN001 - a DataFrame
    """sha256 (16 hex digits) of the per-layer results, column by column, as float64 bytes."""
    digest = hashlib.sha256()
    for column in CHECKSUM_COLUMNS:
        digest.update(np.ascontiguousarray(layers[column].to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()[:16]


def trace_config(tokens: int) -> dict:
    """The benchmark's volatile DeepSeek-V3 trace."""
    return {
        "preset": "deepseek-v3", "tokens": tokens, "seed": 0,
        "overrides": {"alpha_first": 1.0, "alpha_last": 1.4,
                      "prompt_tokens": {"kind": "lognormal", "mean": 128, "sigma": 0.5,
                                        "min": 16, "max": 512},
                      "decode_tokens": {"kind": "lognormal", "mean": 64, "sigma": 0.5,
                                        "min": 8, "max": 128}},
        "volatile": {"shift_every": 8, "burst_every": 32, "burst_len": 8, "seed": 0},
    }


_REFERENCE_RUN = """
import json, sys, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import bench_cluster as bench
from moe_offload_lab.sim.cluster import build_trace, simulate_cluster
args = json.loads(sys.argv[3])
trace = build_trace(bench.trace_config(args["tokens"]))
out = {}
for name, balance in bench.REFERENCE_POLICIES.items():
    cpu = time.process_time()
    result = simulate_cluster({"cluster": args["cluster"], "model": "deepseek-v3",
                               "balance": balance, "batch": args["batch"]}, trace=trace)
    out[name] = {"cpu_s": time.process_time() - cpu, "checksum": bench.checksum(result.layers)}
print(json.dumps(out))
"""


def reference_tree(ref: str, into: Path) -> Path:
    """A package tree: ``sim/cluster`` and ``policies/balancing`` of ``ref``, everything else
    of the working tree (symlinks); returns the folder to put on ``sys.path``."""
    old = into / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "sim/cluster",
                              "policies/balancing"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    pkg = into / "pkg" / "moe_offload_lab"
    pkg.mkdir(parents=True)
    shutil.copy(ROOT / "moe_offload_lab" / "__init__.py", pkg / "__init__.py")
    for top in ("traces", "hw"):
        (pkg / top).symlink_to(ROOT / top)
    for top, replaced in (("sim", "cluster"), ("policies", "balancing")):
        (pkg / top).mkdir()
        for item in (ROOT / top).iterdir():
            if item.name not in (replaced, "__pycache__"):
                (pkg / top / item.name).symlink_to(item)
        (pkg / top / replaced).symlink_to(old / top / replaced)
    return into / "pkg"


def run_reference(ref: str, tokens: int, cluster: str, batch: int) -> dict | None:
    """CPU time and checksum of each reference balancer (None, with a note, if it cannot run)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = reference_tree(ref, Path(tmp))
            done = subprocess.run(
                [sys.executable, "-c", _REFERENCE_RUN, str(path), str(Path(__file__).parent),
                 json.dumps({"tokens": tokens, "cluster": cluster, "batch": batch})],
                capture_output=True, text=True, check=True, env={**os.environ,
                                                                  "PYTHONPATH": ""})
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            print(f"reference {ref}: cannot run ({detail.strip().splitlines()[-1][:200]})")
            return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="h100x8-nvswitch")
    parser.add_argument("--tokens", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reference", default="2c7258f",
                        help="git ref of the simulator before the rewrite ('none': skip)")
    args = parser.parse_args()
    tokens = 3000 if args.quick else args.tokens
    start = time.perf_counter()
    trace = build_trace(trace_config(tokens))
    trace_s = time.perf_counter() - start
    print(f"trace: deepseek-v3, {trace.num_tokens} tokens, "
          f"{len(trace.request_ids())} requests, built in {trace_s:.1f} s; cluster "
          f"{args.cluster}, batch {args.batch}")
    from moe_offload_lab.policies.balancing.planners import compiled_core

    compiled_core()  # compile (or load from the disk cache) before anything is timed
    header = (f"{'policy':14s} {'imb before':>16s} {'imb after':>16s} {'prefill ms':>10s} "
              f"{'decode tok/s':>12s} {'replica GB':>10s} {'stall ms':>9s} {'plan ms':>8s} "
              f"{'total s':>8s} {'wall s':>7s} {'cpu s':>6s} {'x static':>8s} "
              f"{'checksum':>16s}")
    print(header)
    print(" " * 15 + f"{'mean / p99':>16s} {'mean / p99':>16s}")
    cpu, sums = {}, {}
    for name in POLICIES:
        result = simulate_cluster({"cluster": args.cluster, "model": "deepseek-v3",
                                   "balance": name, "batch": args.batch}, trace=trace)
        s = result.summary
        cpu[name] = s["sim_cpu_s"]
        sums[name] = checksum(result.layers)
        print(f"{name:14s} {s['imbalance_before_mean']:7.3f} / {s['imbalance_before_p99']:6.3f} "
              f"{s['imbalance_after_mean']:7.3f} / {s['imbalance_after_p99']:6.3f} "
              f"{s['prefill_latency_ms_mean']:10.2f} {s['decode_tokens_per_s']:12.1f} "
              f"{s['replica_bytes'] / 1e9:10.1f} {s['stall_s'] * 1e3:9.2f} "
              f"{s['plan_wait_s'] * 1e3:8.2f} {s['total_s']:8.3f} {s['sim_wall_s']:7.2f} "
              f"{s['sim_cpu_s']:6.2f} {s['sim_cpu_s'] / cpu['static']:8.2f} "
              f"{sums[name]:>16s}")
    print(f"steps per run: {s['steps']} ({s['prefill_steps']} prefill), "
          f"{s['steps'] * trace.spec.num_moe_layers} step-layers; weights per rank "
          f"{s['weights_per_rank_gib']:.0f} GiB (fits_gpu_memory: {s['fits_gpu_memory']})")
    worst = max(PROBE_STYLE, key=cpu.__getitem__)
    ratio = cpu[worst] / cpu["static"]
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"target: planner-driven PROBE-style within {TARGET_RATIO:g}x of static (CPU time): "
          f"slowest {worst} {ratio:.2f}x -> {verdict}; probe with its learned predictor "
          f"{cpu['probe'] / cpu['static']:.2f}x (one run, one machine, shared)")
    if args.reference.lower() == "none":
        return
    before = run_reference(args.reference, tokens, args.cluster, args.batch)
    if before is None:
        return
    base = before["static"]["cpu_s"]
    ratios = ", ".join(f"{name} {v['cpu_s'] / base:.2f}x" for name, v in before.items()
                       if name != "static")
    print(f"before ({args.reference}, same trace, same run): static {base:.2f} CPU s; {ratios}")
    same = "identical" if before["static"]["checksum"] == sums["static"] else "DIFFERENT"
    print(f"static checksum now {sums['static']}, at {args.reference} "
          f"{before['static']['checksum']}: {same}")


if __name__ == "__main__":
    main()
