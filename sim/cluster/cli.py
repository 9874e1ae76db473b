"""Command line of the cluster simulator.

``python -m moe_offload_lab.sim.cluster.cli --cluster h100x8-nvswitch --model deepseek-v3
--balance probe --tokens 2000 -o out/ep`` runs one configuration, prints its summary and writes
the outputs (``summary.json``, ``steps.parquet``, ``layers.parquet``, ``transfers.parquet``,
``timeline.json``). ``moe-sim cluster=...`` runs the same simulator through Hydra. User errors
print one line, prefixed with this command's own name, and exit 2
(:func:`traces.errors.run_command`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from moe_offload_lab.traces.errors import ConfigError, run_command

PROG = "python -m moe_offload_lab.sim.cluster.cli"
_SHOWN = ("cluster", "model", "expert_bytes_per_param", "balance", "oracle", "pool", "steps",
          "imbalance_before_mean", "imbalance_before_p99", "imbalance_after_mean",
          "imbalance_after_p99", "prefill_latency_ms_mean", "decode_tokens_per_s",
          "replica_copies", "replica_bytes", "stall_s", "plan_wait_s", "total_s",
          "weights_per_rank_gib", "fits_gpu_memory", "sim_wall_s")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Simulate expert-parallel MoE inference on a multi-GPU cluster.")
    parser.add_argument("--cluster", default="h100x8-nvswitch", help="conf/cluster name or YAML")
    parser.add_argument("--model", default="deepseek-v3", help="conf/model name")
    parser.add_argument("--preset", default=None, help="conf/trace preset (default: the model)")
    parser.add_argument("--balance", default="static", help="conf/balance name or YAML")
    parser.add_argument("--predictor", default=None,
                        help="override the probe policy's load predictor "
                             "(gate, learned, history, oracle)")
    parser.add_argument("--checkpoint", default=None,
                        help="the learned predictor's checkpoint (prior: lookahead)")
    parser.add_argument("--expert-bytes-per-param", type=float, default=None,
                        help="expert quantisation, e.g. 1.0 for FP8 (default: the model's)")
    parser.add_argument("--strict-memory", action="store_true",
                        help="refuse a run whose weights do not fit a rank's GPU")
    parser.add_argument("--redundant", type=int, default=None,
                        help="redundant expert slots per rank (R)")
    parser.add_argument("--tokens", type=int, default=2000, help="trace tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16, help="requests per static batch")
    parser.add_argument("--no-prefill", action="store_true", help="skip prefill steps")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--shift-every", type=int, default=0,
                        help="volatile routing: new hot experts every N requests (0: off)")
    parser.add_argument("--burst-every", type=int, default=0,
                        help="volatile routing: a burst window every N positions (0: off)")
    parser.add_argument("--burst-len", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=None,
                        help="popularity skew (sets alpha_first and alpha_last)")
    parser.add_argument("-o", "--out", default=None, help="output folder")
    parser.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    return parser


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`~sim.cluster.simulate.simulate_cluster` mapping for parsed arguments."""
    cluster: Any = args.cluster
    if args.redundant is not None:
        cluster = {"base": args.cluster, "redundant_slots": args.redundant}
    balance: Any = args.balance
    if args.predictor is not None or args.checkpoint is not None:
        balance = {"name": args.balance}
        if args.predictor is not None:
            balance["predictor"] = args.predictor
        if args.checkpoint is not None:
            balance["checkpoint"] = args.checkpoint
    model: Any = args.model
    if args.expert_bytes_per_param is not None:
        from moe_offload_lab.traces.catalog import load_model

        model = load_model(args.model,
                           expert_bytes_per_param=args.expert_bytes_per_param).to_dict()
    trace: dict[str, Any] = {"tokens": args.tokens, "seed": args.seed}
    if args.preset:
        trace["preset"] = args.preset
    if args.alpha is not None:
        trace["overrides"] = {"alpha_first": args.alpha, "alpha_last": args.alpha}
    if args.shift_every or args.burst_every:
        trace["volatile"] = {"shift_every": max(args.shift_every, 1),
                             "burst_every": args.burst_every, "burst_len": args.burst_len,
                             "seed": args.seed}
    config: dict[str, Any] = {"cluster": cluster, "model": model, "balance": balance,
                              "trace": trace, "batch": args.batch,
                              "prefill": not args.no_prefill,
                              "strict_memory": args.strict_memory}
    if args.max_steps is not None:
        config["max_steps"] = args.max_steps
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)

    def command() -> int:
        from moe_offload_lab.sim.cluster.simulate import simulate_cluster

        if args.tokens < 1:
            raise ConfigError(f"--tokens must be at least 1, got {args.tokens}")
        result = simulate_cluster(config_from_args(args))
        if args.json:
            print(json.dumps(result.summary, indent=2, default=str))
        else:
            for key in _SHOWN:
                value = result.summary.get(key)
                text = f"{value:.4g}" if isinstance(value, float) else str(value)
                print(f"{key:26s} {text}")
        from moe_offload_lab.sim.cli import memory_note

        note = memory_note([result.summary])
        if note:
            print(note)
        if args.out:
            for path in result.write(args.out):
                print(f"wrote {path}")
        return 0

    return run_command(PROG, command)


if __name__ == "__main__":
    raise SystemExit(main())
