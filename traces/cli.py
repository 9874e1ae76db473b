"""``moe-trace``: make, check, analyse and plot routing traces.

    moe-trace synth --preset mixtral-8x7b --requests 16 --seed 0 -o mixtral.parquet
    moe-trace stats mixtral.parquet [--json]
    moe-trace fit real.parquet -o fitted.yaml        # then: moe-trace synth --preset fitted.yaml
    moe-trace compare real.parquet synthetic.parquet [-o compare.png] [--markdown]
    moe-trace validate mixtral.parquet
    moe-trace plot mixtral.parquet -o mixtral.png
    moe-trace record --config tiny-mixtral --prompts prompts.txt --lookahead 2 -o rec.parquet
    moe-trace import --from vllm routed.npz --model mixtral-8x7b -o imported.parquet
    moe-trace export --to csv mixtral.parquet -o mixtral.csv

User errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError, run_command

from moe_offload_lab import version_line

PROG = "moe-trace"


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError("cache fractions must lie in (0, 1]")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=version_line(PROG))
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate a synthetic trace from a preset")
    synth.add_argument(
        "--preset", default="mixtral-8x7b",
        help="a name from conf/trace or a preset YAML file (default: mixtral-8x7b)"
    )
    size = synth.add_mutually_exclusive_group()
    size.add_argument("--requests", type=int, help="number of requests (default: the preset's)")
    size.add_argument("--tokens", type=int, help="total number of tokens instead of requests")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--lookahead",
        type=int,
        metavar="D",
        help="lookahead distances to record (default: the preset's)",
    )
    synth.add_argument("--features", type=int, metavar="F",
                       help="hidden-state features per layer (default: the preset's; 0: none)")
    synth.add_argument("-o", "--output", required=True, type=Path, help="trace file to write")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")

    fit = sub.add_parser("fit", help="fit the generator to a real trace and write a preset",
                         description="Fit the hidden-state generator to a real trace; writes a "
                                     "preset YAML and its .npz of router rows beside it.")
    fit.add_argument("trace", type=Path, help="the real trace (Parquet)")
    fit.add_argument("-o", "--output", required=True, type=Path, help="preset YAML to write")
    fit.add_argument("--dim", type=int, default=16, help="latent state dimension (default 16)")
    fit.add_argument("--seed", type=int, default=0)

    compare = sub.add_parser("compare", help="two traces' routing statistics side by side",
                             description="Profile two traces (LRU/Belady curves, adjacent-token "
                                         "reuse, top-1 transitions, skew) side by side.")
    compare.add_argument("traces", type=Path, nargs=2, metavar="TRACE")
    compare.add_argument("-o", "--output", type=Path, help="also draw the comparison (PNG)")
    output = compare.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print a Markdown table")
    output.add_argument("--json", action="store_true", help="print both profiles as JSON")

    stats = sub.add_parser("stats", help="print the analysis of a trace")
    stats.add_argument("trace", type=Path)
    stats.add_argument("--json", action="store_true", help="print JSON with stable keys")
    stats.add_argument(
        "--belady",
        type=_fractions,
        default=(0.25, 0.5),
        metavar="F,F",
        help="cache fractions for Belady's optimal hit ratio (default 0.25,0.5)",
    )
    stats.add_argument(
        "--max-distance",
        type=int,
        default=3,
        help="largest layer distance for mutual information (default 3)",
    )
    stats.add_argument(
        "--context-layers",
        type=int,
        default=3,
        help="largest number of previous layers to condition on (default 3)",
    )

    validate = sub.add_parser("validate", help="check trace files and print a summary of each")
    validate.add_argument("traces", type=Path, nargs="+")

    from moe_offload_lab.traces.importers.cli import add_parsers as add_import_export
    from moe_offload_lab.traces.record.cli import add_parser as add_record

    add_record(sub)
    add_import_export(sub)
    plot = sub.add_parser("plot", help="draw the main measures of a trace as a PNG figure")
    plot.add_argument("trace", type=Path)
    plot.add_argument("-o", "--output", required=True, type=Path, help="PNG file to write")
    return parser


def _synth(args: argparse.Namespace) -> int:
    from moe_offload_lab.traces.synthetic import SynthConfig, generate

    config = SynthConfig.preset(args.preset)
    if args.lookahead is not None:
        if args.lookahead < 0:
            raise ConfigError("--lookahead must not be negative")
        config = config.with_overrides(lookahead_distances=args.lookahead)
    _check_synth_size(config, args)
    trace = generate(
        config, requests=args.requests, tokens=args.tokens, seed=args.seed,
        progress=not args.quiet, features=args.features,
    )
    trace.save(args.output)
    print(
        f"wrote {args.output}: {trace.num_tokens} tokens, {len(trace.request_ids())} requests, "
        f"model {trace.spec.name}, lookahead distances {trace.lookahead_distances or 'none'}, "
        f"features {0 if trace.features is None else trace.features.shape[2]}"
    )
    return 0


def _fit(args: argparse.Namespace) -> int:
    from moe_offload_lab.traces.fit import fit_trace, write_preset
    from moe_offload_lab.traces.format import Trace

    if args.output.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"the preset is YAML; name it *.yaml, not {args.output.name}")
    trace = Trace.load(args.trace)
    result = fit_trace(trace, dim=args.dim, seed=args.seed, where=str(args.trace),
                       progress=lambda step: print(f"fit: {step}", file=sys.stderr))
    preset, structure = write_preset(result, args.output, source=args.trace.name,
                                     tokens=trace.num_tokens,
                                     requests=len(trace.request_ids()))
    print(f"wrote {preset} and {structure.name}; generate with: moe-trace synth --preset "
          f"{preset} --tokens N -o OUT.parquet")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from moe_offload_lab.traces.analysis.profile import routing_profile
    from moe_offload_lab.traces.compare import comparison_rows, format_rows, plot_comparison
    from moe_offload_lab.traces.format import Trace

    if args.output is not None and args.output.suffix.lower() != ".png":
        raise ConfigError(f"the figure is written as PNG; name it *.png, not {args.output.name}")
    traces = [Trace.load(path, columns="all") for path in args.traces]
    profiles = [routing_profile(t) for t in traces]
    labels = [path.name for path in args.traces]
    if len(set(labels)) < 2:
        labels = [str(path) for path in args.traces]
    if args.json:
        json.dump({"traces": labels, "profiles": profiles}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        shapes = "; ".join(f"{label}: {p['trace']['model']}, {p['trace']['tokens']} tokens, "
                           f"{p['trace']['requests']} requests" for label, p in
                           zip(labels, profiles, strict=False))
        print(shapes)
        print(format_rows(comparison_rows(profiles), labels, markdown=args.markdown))
    if args.output is not None:
        path = plot_comparison(profiles, labels, args.output)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _check_synth_size(config: Any, args: argparse.Namespace) -> None:
    """Refuse up front a trace too big for this machine's memory (not a MemoryError later)."""
    from moe_offload_lab.traces.resources import check_trace_memory

    tokens = args.tokens
    if tokens is None:  # requests: their expected total length
        requests = config.requests if args.requests is None else args.requests
        tokens = int(max(1, requests) * (config.prompt_tokens.mean + config.decode_tokens.mean))
    spec = config.model_spec()
    check_trace_memory(max(1, tokens), spec.num_moe_layers, spec.top_k,
                       config.lookahead_distances, "moe-trace synth")


def _compute(args: argparse.Namespace) -> dict[str, Any]:
    from moe_offload_lab.traces.analysis.report import compute_stats
    from moe_offload_lab.traces.format import Trace

    if args.max_distance < 1 or args.context_layers < 1:
        raise ConfigError("--max-distance and --context-layers must be at least 1")
    trace = Trace.load(args.trace)
    return compute_stats(
        trace,
        belady_fractions=args.belady,
        max_distance=args.max_distance,
        context_layers=args.context_layers,
        progress=not args.json,
    )


def _stats(args: argparse.Namespace) -> int:
    from moe_offload_lab.traces.analysis.summary import format_stats

    stats = _compute(args)
    if args.json:
        json.dump(stats, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_stats(stats))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from moe_offload_lab.traces.format import Trace

    for path in args.traces:
        trace = Trace.load(path)
        spec = trace.spec
        if trace.num_tokens == 0:  # every other command refuses such a trace
            raise ConfigError(f"{path}: the trace has no tokens")
        decode = int(trace.phase.sum())
        print(
            f"ok {path}: model {spec.name} ({spec.num_moe_layers} MoE layers, {spec.num_experts} "
            f"experts, top-{spec.top_k}), {trace.num_tokens} tokens ({decode} decode) in "
            f"{len(trace.request_ids())} requests, lookahead distances "
            f"{trace.lookahead_distances or 'none'}, features "
            f"{'none' if trace.features is None else trace.features.shape[2]}"
        )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from moe_offload_lab.traces.analysis.plot import plot_stats
    from moe_offload_lab.traces.analysis.report import compute_stats
    from moe_offload_lab.traces.format import Trace

    if args.output.suffix.lower() != ".png":
        raise ConfigError(f"the figure is written as PNG; name it *.png, not {args.output.name}")
    trace = Trace.load(args.trace)
    path = plot_stats(compute_stats(trace, progress=True), args.output)
    print(f"wrote {path}")
    return 0


def _record(args: argparse.Namespace) -> int:
    from moe_offload_lab.traces.record.cli import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-trace``; returns the exit status."""
    args = _parser().parse_args(argv)
    from moe_offload_lab.traces.importers.cli import HANDLERS as IMPORT_EXPORT

    handlers = {"synth": _synth, "stats": _stats, "validate": _validate, "plot": _plot,
                "record": _record, "fit": _fit, "compare": _compare, **IMPORT_EXPORT}

    def command() -> int:
        if getattr(args, "output", None) is not None:  # before any work: a path we can write
            from moe_offload_lab.traces.atomic import check_output_file

            check_output_file(args.output, "-o")
        return handlers[args.command](args)

    return run_command(PROG, command)


if __name__ == "__main__":
    sys.exit(main())
