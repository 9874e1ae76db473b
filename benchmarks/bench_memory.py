"""Simulator memory: peak RSS per token of a long Mixtral continuous-batching run (issue 19).

The issue's target: at most 2 KB per token for a 1M-token Mixtral-8x7B continuous run with
``log=steps``. The trace is generated first, in a child process, and written as a Parquet file
(routing and the preset's lookahead columns, no feature columns); a second, fresh process then
runs ``moe-sim``'s own path (:func:`sim.run.simulate`: the trace file, loaded routing-only when the
policy reads no lookahead, continuous batching, the chosen event-log level) and reports its peak
resident memory (``ru_maxrss``) over the run's tokens, whole (the interpreter and its imports
included) and net of the RSS before the trace was read.

    python benchmarks/bench_memory.py [--tokens 1000000] [--log steps] [--policy lru]
                                      [--max-batch 32] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_BYTES_PER_TOKEN = 2048


def _rss_bytes() -> int:
    """The process's current resident memory (Linux /proc), bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _generate(tokens: int, path: Path) -> None:
    from moe_offload_lab.traces.synthetic import generate

    generate("mixtral-8x7b", tokens=tokens, seed=0, features=False).save(path)


def _measure(path: Path, log: str, policy: str, max_batch: int) -> dict:
    from moe_offload_lab.sim.cli import compose
    from moe_offload_lab.sim.run import RunConfig, simulate
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose([
        "model=mixtral-8x7b", f"policy={policy}", "workload=continuous",
        "workload.rate_per_s=.inf", f"workload.max_batch={max_batch}", "workload.chunk=256",
        f"trace.path={path}", f"log={log}"]), resolve=True)
    before = _rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    result = simulate(RunConfig.from_dict(cfg))
    s = result.summary
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_bytes": before, "tokens": s["tokens"], "steps": s["steps"],
            "log_rows": s["events"], "kept_rows": len(result.events),
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "hit_rate": s["hit_rate"], "tokens_per_s": s["tokens_per_s"],
            "engine": s.get("engine", "python")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--log", default="steps", choices=("full", "steps", "summary"))
    parser.add_argument("--policy", default="lru")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder for the trace file (reused when present)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # a child: generate, or measure one run
        what, path = args.child
        if what == "generate":
            _generate(args.tokens, Path(path))
        else:
            print(json.dumps(_measure(Path(path), args.log, args.policy, args.max_batch)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"mixtral-{args.tokens}.parquet"
        common = [sys.executable, __file__, "--tokens", str(args.tokens), "--log", args.log,
                  "--policy", args.policy, "--max-batch", str(args.max_batch)]
        if not path.exists():
            subprocess.run([*common, "--child", "generate", str(path)], check=True)
        done = subprocess.run([*common, "--child", "measure", str(path)], check=True,
                              capture_output=True, text=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
    per_token = r["peak_rss_bytes"] / r["tokens"]
    net = (r["peak_rss_bytes"] - r["rss_before_bytes"]) / r["tokens"]
    verdict = "ok" if per_token <= TARGET_BYTES_PER_TOKEN else "MISSED"
    print(f"Mixtral-8x7B continuous batching (all arrived, batch <= {args.max_batch}, prefill "
          f"chunks of 256), {args.policy}, log={args.log}: {r['tokens']:,} tokens, "
          f"{r['steps']:,} steps, {r['log_rows']:,} log rows ({r['kept_rows']:,} kept)")
    before_mib = r["rss_before_bytes"] / 2**20
    print(f"  peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB = {per_token:,.0f} bytes/token "
          f"({verdict}, target {TARGET_BYTES_PER_TOKEN}); net of the {before_mib:,.0f} MiB "
          f"before the trace: {net:,.0f} bytes/token")
    print(f"  run {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s cpu ({r.get('engine', 'python')} "
          f"engine); simulated hit rate "
          f"{r['hit_rate']:.3f}, {r['tokens_per_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
