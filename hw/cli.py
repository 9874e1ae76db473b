"""``moe-hw``: the real offloading executor's command line.

    moe-hw run --model mixtral-8x7b --layers 4 --hidden 512 --policy lru --slots 12 -o out/hw
    moe-hw live --model tiny-mixtral --prompt "def main(" --policy lru --slots 6 -o out/live
    moe-hw calibrate [OVERRIDES]      measure a device, write a hardware profile (conf/hw/calibrate)
    moe-hw validate [OVERRIDES]       executor against simulator over a matrix (conf/hw/validate)

``run`` replays a trace through the executor (``hw.replay``) on ``--device cpu`` (the CPU twin)
or ``cuda``; ``live`` runs a Hugging Face MoE model (a local checkpoint folder or a tiny random
config name) with its own routers and greedy decoding (``hw.live``). Both write summary.json,
steps.parquet, events.parquet and timeline.json, the same files as ``moe-sim``. ``calibrate``
and ``validate`` are Hydra apps; their overrides are listed in ``conf/hw/``. User errors print
one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import run_command

PROG = "moe-hw"


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} run", description="replay a trace through "
                                     "the offloading executor")
    parser.add_argument("--model", default="mixtral-8x7b",
                        help="conf/model name, ModelSpec YAML or Hugging Face config.json")
    parser.add_argument("--layers", type=int, help="scaled-down copy: this many layers")
    parser.add_argument("--hidden", type=int, help="scaled-down copy: this hidden size")
    parser.add_argument("--intermediate", type=int, help="scaled-down copy: expert width")
    parser.add_argument("--policy", default="lru", help="conf/policy name")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--slots", type=int, help="expert cache slots")
    size.add_argument("--gpu-memory-gb", type=float, help="GPU memory budget instead of slots")
    size.add_argument("--resident-all", action="store_true", help="every expert resident")
    parser.add_argument("--tokens", type=int, default=200, help="synthetic trace tokens")
    parser.add_argument("--trace", type=Path, help="a trace file instead of a synthetic one")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (the CPU twin) or cuda")
    parser.add_argument("--hardware", default="h100-sxm", help="profile for the cost model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    return parser


def _run(argv: Sequence[str]) -> int:
    from moe_offload_lab.hw.run import run_from_config
    from moe_offload_lab.sim.run import SimResult

    args = _run_parser().parse_args(argv)
    overrides = {k: v for k, v in (("num_layers", args.layers), ("hidden_size", args.hidden),
                                   ("expert_intermediate_size", args.intermediate))
                 if v is not None}
    cache: dict[str, Any] = {}
    if args.slots is not None:
        cache["slots"] = args.slots
    elif args.gpu_memory_gb is not None:
        cache["gpu_memory_gb"] = args.gpu_memory_gb
    trace = {"path": str(args.trace)} if args.trace else {"tokens": args.tokens,
                                                          "seed": args.seed}
    result = run_from_config({
        "model": args.model, "model_overrides": overrides or None, "trace": trace,
        "policy": args.policy, "cache": cache or None, "batch": args.batch,
        "device": args.device, "seed": args.seed, "resident_all": args.resident_all,
        "hardware": args.hardware})
    paths = SimResult(result.events, result.steps, result.summary).write(args.output)
    shown = {k: v for k, v in result.summary.items() if not isinstance(v, (dict, list))}
    print(json.dumps(shown, indent=1, default=str))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _live_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} live", description="run a Hugging Face MoE "
                                     "model with its experts offloaded")
    parser.add_argument("--model", required=True,
                        help="a local checkpoint folder or a tiny config (tiny-mixtral, ...)")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text (repeat for a batch; left-padded to the longest)")
    parser.add_argument("--policy", default="lru", help="conf/policy name")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--slots", type=int, help="expert cache slots")
    size.add_argument("--gpu-memory-gb", type=float, help="GPU memory budget instead of slots")
    size.add_argument("--resident-all", action="store_true", help="every expert resident")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu (the CPU twin) or cuda")
    parser.add_argument("--hardware", default="h100-sxm", help="profile for the cost model")
    parser.add_argument("--seed", type=int, default=0, help="seed of a tiny random model")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    return parser


def _live(argv: Sequence[str]) -> int:
    from moe_offload_lab.hw.live.runner import run_live
    from moe_offload_lab.sim.run import SimResult

    args = _live_parser().parse_args(argv)
    result = run_live(args.model, args.prompt if len(args.prompt) > 1 else args.prompt[0],
                      args.policy, capacity_slots=args.slots, gpu_memory_gb=args.gpu_memory_gb,
                      device=args.device, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      resident_all=args.resident_all, hardware=args.hardware)
    paths = SimResult(result.events, result.steps, result.summary).write(args.output)
    shown = {k: v for k, v in result.summary.items() if not isinstance(v, (dict, list))}
    print(json.dumps(shown, indent=1, default=str))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-hw``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        return run_command(PROG, lambda: _run(rest))
    if command == "live":
        return run_command(PROG, lambda: _live(rest))
    if command == "calibrate":
        from moe_offload_lab.hw.calibrate.cli import main as calibrate

        return calibrate(rest)
    if command == "validate":
        from moe_offload_lab.hw.validate.cli import main as validate

        return validate(rest)
    print(f"{PROG}: error: unknown command {command!r} (run, live, calibrate, validate)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
