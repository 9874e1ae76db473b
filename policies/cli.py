"""``moe-policy``: the policies and their components, measured decision costs, offline evaluation.

    moe-policy list [--json]                      the bundled policy configs
    moe-policy components [--kind K] [--json]     every component: parameters, defaults, doc, cost
    moe-policy show NAME|FILE.yaml [--json]       a composed policy, every parameter resolved
    moe-policy cost [--out PATH] [--policies a,b] measure the decision cost table on this machine
    moe-policy eval TRACE --policy NAME [--cache-fraction F | --cache-slots N] [--batch B]
                    [--horizon H] [--threshold X] [--json]

User mistakes (a missing or broken trace, an unknown policy or component, a ``_target_`` that does
not import, a cache smaller than one layer's top-k) print one line on stderr and exit with
status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from moe_offload_lab.policies.base import check_lookahead
from moe_offload_lab.policies.components import catalogue, cost_lines, format_catalogue, resolved
from moe_offload_lab.policies.config import (
    available_policies,
    build_policy,
    load_policy_config,
    shape_free_policies,
)
from moe_offload_lab.policies.cost_table import (
    DEFAULT_BATCHES,
    DEFAULT_MODELS,
    default_path,
    format_table,
    load_table,
    measure_table,
    merge,
    print_progress,
    write_table,
)
from moe_offload_lab.policies.evaluation import EvalResult, evaluate
from moe_offload_lab.policies.registry import REGISTRIES
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.errors import ConfigError, run_command
from moe_offload_lab.traces.format import Trace

from moe_offload_lab import version_line

DEFAULT_CACHE_FRACTION = 0.25
DEFAULT_TABLE = "conf/decision_costs/default.yaml"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, like every user error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moe-policy", description="Expert-offloading policies: list, show, "
                     "and evaluate offline on a routing trace.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.add_argument("--version", action="version", version=version_line("moe-policy"))
    listing = sub.add_parser("list", help="bundled policy configs")
    listing.add_argument("--json", action="store_true", help="print JSON")
    comps = sub.add_parser("components", help="every component with its parameters, defaults, "
                           "doc and measured cost (plug-ins included)")
    comps.add_argument("--kind", choices=tuple(REGISTRIES), action="append",
                       help="only this kind (repeatable)")
    comps.add_argument("--json", action="store_true", help="print JSON")
    show = sub.add_parser("show", help="print a composed policy: every parameter resolved, its "
                          "components and its decision cost")
    show.add_argument("policy", help="bundled name or YAML path")
    show.add_argument("--json", action="store_true", help="print JSON")
    cost = sub.add_parser("cost", help="measure each component's decision time per MoE layer "
                          "on this machine into the cost table the simulator charges")
    cost.add_argument("--out", help=f"table to write (default {DEFAULT_TABLE})")
    cost.add_argument("--policies", default="", help="comma-separated names or YAML paths "
                      "(default: every bundled shape-free policy); given ones are merged into "
                      "an existing --out table")
    cost.add_argument("--models", default=",".join(DEFAULT_MODELS),
                      help="model shapes to measure on (conf/model names)")
    cost.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)),
                      help="batch sizes (tokens per step)")
    cost.add_argument("--tokens", type=int, default=1024, help="trace tokens at batch 1")
    cost.add_argument("--batch-tokens", type=int, default=4096,
                      help="trace tokens for larger batches")
    cost.add_argument("--repeat", type=int, default=2, help="timed replays per measurement")
    ev = sub.add_parser("eval", help="replay a trace: prediction quality and cache hit ratio")
    ev.add_argument("trace", help="trace file (Parquet)")
    ev.add_argument("--policy", required=True, help="bundled policy name or YAML path")
    size = ev.add_mutually_exclusive_group()
    size.add_argument("--cache-fraction", type=float, default=None,
                      help=f"cache size as a fraction of all experts (default "
                           f"{DEFAULT_CACHE_FRACTION})")
    size.add_argument("--cache-slots", type=int, default=None, help="cache size in experts")
    ev.add_argument("--batch", type=int, default=1, help="consecutive tokens per step")
    ev.add_argument("--horizon", type=int, default=None,
                    help="lookahead distances to score (default: the policy's horizon)")
    ev.add_argument("--threshold", type=float, default=0.5,
                    help="score at or above which an expert counts as predicted")
    ev.add_argument("--json", action="store_true", help="print JSON with stable keys")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-policy``."""
    args = _parser().parse_args(argv)
    return run_command("moe-policy", lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    handlers = {"list": _list, "components": _components, "show": _show, "cost": _cost,
                "eval": _eval}
    return handlers[args.command](args)


def _components(args: argparse.Namespace) -> int:
    table = load_table()
    rows, problems = catalogue(tuple(args.kind or ()), table)
    if args.json:
        print(json.dumps({"components": rows, "plugin_problems": problems,
                          "cost_table": table.path if table else None}, indent=2))
    else:
        print(format_catalogue(rows, table))
    for line in problems:
        print(f"moe-policy: warning: {line}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    policy = build_policy(args.policy)
    config = policy.config
    table = load_table(config.decision_cost["table"]) if config.decision_cost and \
        "table" in config.decision_cost else load_table()
    costs = cost_lines(policy, table)
    if args.json:
        print(json.dumps({"policy": resolved(policy), "oracle": policy.is_oracle,
                          "classes": {k: _class_name(getattr(policy, k)) for k in REGISTRIES},
                          "decision_cost": costs}, indent=2))
        return 0
    oracle = " [upper bound: reads the future]" if policy.is_oracle else ""
    print(f"# policy {config.name}{oracle}: {config.description}")
    for kind in REGISTRIES:
        print(f"#   {kind:<11} {_class_name(getattr(policy, kind))}")
    for line in costs:
        print(f"# {line}")
    print(yaml.safe_dump(resolved(policy), sort_keys=False, default_flow_style=None), end="")
    return 0


def _class_name(component: object) -> str:
    cls = type(component)
    return f"{cls.__module__}.{cls.__qualname__}"


def _cost(args: argparse.Namespace) -> int:
    names = [p for p in args.policies.split(",") if p] or shape_free_policies()
    models = [m for m in args.models.split(",") if m]
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        raise ConfigError(f"--batches must be integers, got {args.batches!r}") from None
    if not models or not batches or min(batches) < 1:
        raise ConfigError("--models and --batches need at least one entry; batches >= 1")
    for value, flag in ((args.tokens, "--tokens"), (args.batch_tokens, "--batch-tokens"),
                        (args.repeat, "--repeat")):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1")
    for name in names:
        build_policy(name)  # every policy builds before anything is measured
    for model in models:
        load_model(model)
    out = Path(args.out) if args.out else default_path()
    command = " ".join(["moe-policy", "cost", *sys.argv[2:]]) if sys.argv[1:2] == ["cost"] \
        else "moe-policy cost"
    print(f"measuring {len(names)} policies on {', '.join(models)} at batch "
          f"{', '.join(map(str, batches))} (10-20 minutes on a busy 2-core machine)",
          file=sys.stderr)
    table = measure_table(names, models, batches, args.tokens, args.batch_tokens, args.repeat,
                          progress=print_progress, command=command)
    if args.policies and out.is_file():
        table = merge(load_table(out), table)
    path = write_table(table, out)
    print(format_table(table))
    print(f"wrote {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name in available_policies():
        config = load_policy_config(name)
        oracle = build_policy(config).is_oracle
        rows.append({"name": name, "oracle": oracle, "description": config.description})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max((len(r["name"]) for r in rows), default=4)
        for row in rows:
            tag = " [upper bound]" if row["oracle"] else ""
            print(f"{row['name']:<{width}}  {row['description']}{tag}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    config = load_policy_config(args.policy)
    if args.horizon is not None:
        if args.horizon < 1:
            raise ConfigError("--horizon must be at least 1")
        config = dataclasses.replace(config, horizon=args.horizon)
    if args.batch < 1:
        raise ConfigError("--batch must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError("--threshold must lie in [0, 1]")
    policy = build_policy(config)
    trace = Trace.load(args.trace)
    spec = trace.spec
    n_keys = spec.num_expert_keys
    if args.cache_slots is not None:
        slots = args.cache_slots
    else:
        fraction = DEFAULT_CACHE_FRACTION if args.cache_fraction is None else args.cache_fraction
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"--cache-fraction must lie in (0, 1], got {fraction}")
        slots = math.floor(fraction * n_keys)
    if slots < spec.top_k:
        raise ConfigError(f"a cache of {slots} slots is smaller than one layer's top-k "
                          f"({spec.top_k}) of {spec.name}")
    if slots > n_keys:
        raise ConfigError(f"--cache-slots {slots} exceeds the {n_keys} experts of {spec.name}")
    if trace.num_tokens == 0:
        raise ConfigError(f"{args.trace}: the trace has no tokens")
    check_lookahead(policy, spec, trace.lookahead_distances, f"trace {args.trace}")
    result = evaluate(trace, policy, slots, batch=args.batch, threshold=args.threshold)
    payload = {"trace": str(args.trace), **result.to_dict()}
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=False))
    else:
        print(_table(args.trace, result))
    return 0


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "   -  "
    return f"{value:6.3f}"


def _table(path: str, result: EvalResult) -> str:
    data = result.to_dict()
    cache = data["cache"]
    oracle = "  [upper bound: reads the future]" if result.is_oracle else ""
    lines = [
        f"trace {path}: {result.model}, {result.tokens} tokens, {result.num_layers} MoE layers x "
        f"{result.num_experts} experts, top-{result.top_k}",
        f"policy {result.policy}{oracle}; batch {result.batch} ({result.steps} steps)",
        f"cache {cache['slots']} slots ({cache['fraction']:.1%}) {cache['replacement']}: "
        f"hit ratio {cache['hit_ratio']:.4f} ({cache['hits']}/{cache['accesses']}), "
        f"demand fetches {cache['demand_fetches']}, streamed {cache['streamed']}, "
        f"cpu {cache['cpu_computed']}, prefetched {cache['prefetched']} "
        f"(used {cache['prefetch_used']}), evictions {cache['evictions']}",
    ]
    pred = data["prediction"]
    if pred is None:
        return "\n".join(lines)
    lines.append(f"predictor {pred['predictor']}, horizon {pred['horizon']}, "
                 f"threshold {pred['threshold']}")
    lines.append("distance  precision  recall  topk_acc")
    for row in pred["per_distance"]:
        lines.append(f"{row['distance']:>8}  {_fmt(row['precision']):>9}  "
                     f"{_fmt(row['recall']):>6}  {_fmt(row['topk_accuracy']):>8}")
    lines.append("per target layer (precision/recall/topk_acc by distance):")
    header = "layer " + "".join(f"  d={d:<21}" for d in range(1, pred["horizon"] + 1))
    lines.append(header)
    by_layer: dict[int, dict[int, dict[str, Any]]] = {}
    for row in pred["per_layer"]:
        by_layer.setdefault(row["layer"], {})[row["distance"]] = row
    for layer in sorted(by_layer):
        cells = []
        for d in range(1, pred["horizon"] + 1):
            row = by_layer[layer].get(d)
            cells.append("  " + ("-" * 21 if row is None else
                                 f"{_fmt(row['precision'])}/{_fmt(row['recall'])}/"
                                 f"{_fmt(row['topk_accuracy'])}"))
        lines.append(f"{layer:>5} " + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
