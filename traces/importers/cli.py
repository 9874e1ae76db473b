"""``moe-trace import`` and ``moe-trace export``: convert between traces and other formats.

    moe-trace import --from vllm routed.npz --model mixtral-8x7b -o mixtral.parquet
    moe-trace import --from vllm routed.npy --model conf.yaml --lengths lengths.txt -o t.parquet
    moe-trace import --from vllm responses.jsonl --model path/to/Qwen3-30B-A3B -o t.parquet
    moe-trace import --from megatron router_trace_rank0.jsonl --model qwen3-30b-a3b -o t.parquet
    moe-trace import --from megatron trace/router_trace_rank*.jsonl --tensor-parallel 2 \
        --sequence-parallel --micro-batch-size 4 --model config.json -o t.parquet
    moe-trace import --from sglang expert_distribution_recorder_1.pt --model deepseek-v3 -o t.pq
    moe-trace import --from eplb load.npy --model deepseek-v3 -o t.parquet
    moe-trace import --from moe-infinity eam.npy --model mixtral-8x7b -o t.parquet
    moe-trace import --from csv routing.csv --model mixtral-8x7b -o t.parquet
    moe-trace export --to csv mixtral.parquet -o routing.csv
    moe-trace export --to vllm mixtral.parquet -o routed.npz [--all-layers]
    moe-trace export --to eplb mixtral.parquet -o load.npy [--all-layers]

Formats: vllm, megatron, eplb, moe-infinity, csv, npy (both directions), sglang (import).
``--model`` is a catalog name, a ModelSpec YAML, or a Hugging Face config.json (or the checkpoint
folder holding one). ``add_parsers`` adds both
subcommands to an existing ``moe-trace`` parser; each sets ``handler`` (a function of the parsed
arguments returning the exit status). User errors raise MoeLabError; :func:`main` (and the
``moe-trace`` entry point) prints them as one line and returns 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError, run_command

PROG = "moe-trace"
FORMATS = ("vllm", "megatron", "sglang", "eplb", "moe-infinity", "csv", "npy")
# option -> (formats it applies to, keyword of the importer or exporter)
IMPORT_OPTIONS = {"lengths": (("vllm",), "lengths"), "mode": (("megatron",), "mode"),
                  "micro_batch_size": (("megatron",), "micro_batch_size"),
                  "tensor_parallel": (("megatron",), "tensor_parallel"),
                  "sequence_parallel": (("megatron",), "sequence_parallel"),
                  "stage_layers": (("megatron",), "stage_layers"),
                  "layer_ids": (("megatron",), "layer_ids"),
                  "ranks_summed": (("sglang",), "ranks_summed")}


def _stage_layers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


def add_parsers(subparsers: Any) -> None:
    """Add the ``import`` and ``export`` subcommands to an ``add_subparsers()`` object."""
    imp = subparsers.add_parser(
        "import", help="convert another tool's routing capture into a trace file",
        description="Convert a routing capture of another tool into a trace (Parquet v1).")
    imp.add_argument("input", type=Path, nargs="+",
                     help="file to import (megatron: the rank files of one data-parallel replica)")
    imp.add_argument("--from", dest="fmt", required=True, metavar="FORMAT",
                     help=f"input format: {', '.join(FORMATS)}")
    imp.add_argument("--model", required=True,
                     help="model the capture comes from: a name from conf/model, a ModelSpec "
                          "YAML, or a Hugging Face config.json (or its checkpoint folder)")
    imp.add_argument("--lengths", type=Path, metavar="FILE",
                     help="vllm only: request lengths, one 'TOKENS [PROMPT_TOKENS]' per line")
    meg = imp.add_argument_group("megatron")
    meg.add_argument("--mode", choices=("auto", "training", "inference"),
                     help="training (micro-batches, recompute repeats) or inference (engine "
                          "steps); default auto")
    meg.add_argument("--micro-batch-size", type=int, metavar="B",
                     help="training: sequences per micro-batch (default 1)")
    meg.add_argument("--tensor-parallel", type=int, metavar="T",
                     help="rank files per pipeline stage (default 1)")
    meg.add_argument("--sequence-parallel", action="store_true", default=None,
                     help="tensor-parallel rank files hold slices of the tokens")
    meg.add_argument("--stage-layers", type=_stage_layers, metavar="N,N,...",
                     help="transformer blocks per pipeline stage (default: an even split)")
    meg.add_argument("--layer-ids", choices=("auto", "local0", "global1", "moe0"),
                     help="layer numbering: local0 (hook path), global1 (sink path, Megatron "
                          "layer numbers), moe0 (sink without layer numbers); default auto")
    sgl = imp.add_argument_group("sglang")
    sgl.add_argument("--ranks-summed", type=int, metavar="N",
                     help="stat dumps: ranks that routed the same tokens (tensor parallel size "
                          "without DP attention); counts are divided by N")
    imp.add_argument("-o", "--output", required=True, type=Path, help="trace file to write")
    imp.set_defaults(handler=run_import)

    exp = subparsers.add_parser(
        "export", help="convert a trace file into another tool's format",
        description="Write a trace in another format (what the format cannot hold is dropped).")
    exp.add_argument("trace", type=Path, help="trace file to export")
    exp.add_argument("--to", dest="fmt", required=True, metavar="FORMAT",
                     help=f"output format: {', '.join(FORMATS)}")
    exp.add_argument("--all-layers", action="store_true",
                     help="vllm and eplb: size the layer axis by every transformer block, as "
                          "vLLM and SGLang do (dense blocks hold 0)")
    exp.add_argument("-o", "--output", required=True, type=Path, help="file to write")
    exp.set_defaults(handler=run_export)


def run_import(args: argparse.Namespace) -> int:
    """Handler of ``moe-trace import``."""
    from moe_offload_lab.traces.importers import IMPORTERS, import_trace

    if args.fmt not in IMPORTERS:
        raise ConfigError(f"unknown import format {args.fmt!r}; known: {', '.join(IMPORTERS)}")
    options = {}
    for name, (formats, keyword) in IMPORT_OPTIONS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if args.fmt not in formats:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} applies to --from {' or '.join(formats)} only")
        options[keyword] = value
    inputs = list(args.input)
    if len(inputs) > 1 and args.fmt != "megatron":
        raise ConfigError(f"--from {args.fmt} reads one file; several apply to megatron only")
    source = inputs if args.fmt == "megatron" and len(inputs) > 1 else inputs[0]
    trace = import_trace(args.fmt, source, args.model, **options)
    try:
        trace.save(args.output)
    except OSError as exc:
        raise ConfigError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    shown = inputs[0] if len(inputs) == 1 else f"{inputs[0]} (+{len(inputs) - 1} files)"
    print(f"wrote {args.output}: {trace.num_tokens} tokens, {len(trace.request_ids())} "
          f"requests, model {trace.spec.name}, from {args.fmt} {shown}")
    if trace.provenance.get("count_only"):
        print("note: count-only input: the tokens are reconstructed from expert counts; "
              "per-layer counts are exact, token-level structure is synthetic")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``moe-trace export``."""
    from moe_offload_lab.traces.format import Trace
    from moe_offload_lab.traces.importers import EXPORTERS, export_trace

    if args.fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format {args.fmt!r}; known: {', '.join(EXPORTERS)}")
    options = {}
    if args.all_layers:
        if args.fmt not in ("vllm", "eplb"):
            raise ConfigError("--all-layers applies to --to vllm or eplb only")
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
