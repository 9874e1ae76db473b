"""``moe-trace import`` and ``moe-trace export``: convert between traces and other formats.

    moe-trace import --from vllm routed.npz --model mixtral-8x7b -o mixtral.parquet
    moe-trace import --from vllm routed.npy --model conf.yaml --lengths lengths.txt -o t.parquet
    moe-trace import --from megatron router_trace_rank0.jsonl --model qwen3-30b-a3b -o t.parquet
    moe-trace import --from moe-infinity eam.npy --model mixtral-8x7b -o t.parquet
    moe-trace import --from csv routing.csv --model mixtral-8x7b -o t.parquet
    moe-trace import --from flame flame-moe-290m/ -o flame.parquet
    moe-trace export --to csv mixtral.parquet -o routing.csv
    moe-trace export --to vllm mixtral.parquet -o routed.npz [--all-layers]

Formats: vllm, megatron, moe-infinity, csv, npy (both directions). ``add_parsers`` adds both
subcommands to an existing ``moe-trace`` parser; each sets ``handler`` (a function of the parsed
arguments returning the exit status). User errors raise MoeLabError; :func:`main` (and the
``moe-trace`` entry point) prints them as one line and returns 2. flame: import only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError, run_command

PROG = "moe-trace"
FORMATS = ("vllm", "megatron", "moe-infinity", "csv", "npy", "flame")
MODEL_OPTIONAL = ("flame",)  # formats whose files name the model


def add_parsers(subparsers: Any) -> None:
    """Add the ``import`` and ``export`` subcommands to an ``add_subparsers()`` object."""
    imp = subparsers.add_parser(
        "import", help="convert another tool's routing capture into a trace file",
        description="Convert a routing capture of another tool into a trace (Parquet v1).")
    imp.add_argument("input", type=Path, help="file to import")
    imp.add_argument("--from", dest="fmt", required=True, metavar="FORMAT",
                     help=f"input format: {', '.join(FORMATS)}")
    imp.add_argument("--model",
                     help="model the capture comes from: a name from conf/model or a YAML path "
                          "(required except for flame, whose files name it)")
    imp.add_argument("--lengths", type=Path, metavar="FILE",
                     help="vllm and flame: request lengths, one 'TOKENS [PROMPT_TOKENS]' per line")
    imp.add_argument("--max-tokens", type=int, metavar="N",
                     help="flame only: import the first N tokens (the dataset's files hold 52M)")
    imp.add_argument("-o", "--output", required=True, type=Path, help="trace file to write")
    imp.set_defaults(handler=run_import)

    exp = subparsers.add_parser(
        "export", help="convert a trace file into another tool's format",
        description="Write a trace in another format (what the format cannot hold is dropped).")
    exp.add_argument("trace", type=Path, help="trace file to export")
    exp.add_argument("--to", dest="fmt", required=True, metavar="FORMAT",
                     help=f"output format: {', '.join(f for f in FORMATS if f != 'flame')}")
    exp.add_argument("--all-layers", action="store_true",
                     help="vllm only: size the layer axis by every transformer block, as vLLM "
                          "does (dense blocks hold 0)")
    exp.add_argument("-o", "--output", required=True, type=Path, help="file to write")
    exp.set_defaults(handler=run_export)


def run_import(args: argparse.Namespace) -> int:
    """Handler of ``moe-trace import``."""
    from moe_offload_lab.traces.importers import IMPORTERS, import_trace

    if args.fmt not in IMPORTERS:
        raise ConfigError(f"unknown import format {args.fmt!r}; known: {', '.join(IMPORTERS)}")
    options = {}
    if args.model is None and args.fmt not in MODEL_OPTIONAL:
        raise ConfigError(f"--model is required for --from {args.fmt}")
    if args.lengths is not None:
        if args.fmt not in ("vllm", "flame"):
            raise ConfigError("--lengths applies to --from vllm and flame only")
        options["lengths"] = args.lengths
    if args.max_tokens is not None:
        if args.fmt != "flame":
            raise ConfigError("--max-tokens applies to --from flame only")
        options["max_tokens"] = args.max_tokens
    trace = import_trace(args.fmt, args.input, args.model, **options)
    try:
        trace.save(args.output)
    except OSError as exc:
        raise ConfigError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {args.output}: {trace.num_tokens} tokens, {len(trace.request_ids())} "
          f"requests, model {trace.spec.name}, from {args.fmt} {args.input}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``moe-trace export``."""
    from moe_offload_lab.traces.format import Trace
    from moe_offload_lab.traces.importers import EXPORTERS, export_trace

    if args.fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format {args.fmt!r}; known: {', '.join(EXPORTERS)}")
    options = {}
    if args.all_layers:
        if args.fmt != "vllm":
            raise ConfigError("--all-layers applies to --to vllm only")
        options["all_layers"] = True
    trace = Trace.load(args.trace, columns="routing")
    try:
        path = export_trace(args.fmt, trace, args.output, **options)
    except OSError as exc:
        raise ConfigError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {path}: {trace.num_tokens} tokens of {args.trace} as {args.fmt}")
    return 0


HANDLERS = {"import": run_import, "export": run_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m moe_offload_lab.traces.importers.cli import ...``)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_command(PROG, lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
