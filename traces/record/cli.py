"""``moe-trace record``: record a Hugging Face MoE model's routing to a trace file.

    moe-trace record path/to/Mixtral-8x7B --prompts prompts.txt --max-new-tokens 32 -o mix.parquet
    moe-trace record --config tiny-mixtral --prompts prompts.jsonl --lookahead 2 -o tiny.parquet
    moe-trace record path/to/DeepSeek-V3 --device-map auto --max-memory 0=120GiB,cpu=600GiB \
        --offload-folder offload --prompts prompts.txt -o v3.parquet

``add_parser(subparsers)`` adds the subcommand to an argparse parser; ``run(args)`` executes it.
Finished batches are kept in ``<output>.parts`` until the trace is written, so an interrupted
run resumes when the same command is run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.record.loading import DTYPES, QUANTIZATIONS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``record`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "record", help="record the routing of a Hugging Face MoE model",
        description="Run prompts through a MoE model (prefill, then decode) and write the "
                    "experts every token used at every MoE layer as a trace.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("model", nargs="?", type=Path,
                        help="local Hugging Face checkpoint folder")
    source.add_argument("--config", metavar="NAME|JSON",
                        help="random model instead: a tiny config name (tiny-mixtral, ...), a "
                             "JSON file or inline JSON with model_type")
    parser.add_argument("--prompts", required=True, type=Path,
                        help=".txt (one prompt per line) or .jsonl (\"prompt\" or \"text\")")
    parser.add_argument("--max-new-tokens", type=int, default=16,
                        help="decode steps per request (default 16)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="prompts per forward pass (default 4)")
    parser.add_argument("--lookahead", type=int, default=0, metavar="D",
                        help="record lookahead distances 1..D (default 0)")
    parser.add_argument("--features", type=int, default=0, metavar="F",
                        help="record F random-projection features per layer (default 0)")
    parser.add_argument("--feature-seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default) decodes greedily, > 0 samples")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling seed, and weight seed of a --config model (default 0)")
    parser.add_argument("--no-stop-at-eos", action="store_true",
                        help="keep decoding after a request samples the end-of-sequence token")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights dtype (auto: float32 on the CPU, the checkpoint's else)")
    big = parser.add_argument_group("large checkpoints (need accelerate)")
    big.add_argument("--device-map", metavar="MAP",
                     help="place the model with transformers/accelerate instead of --device: "
                          "auto, balanced, sequential, a device, or JSON {module: device}")
    big.add_argument("--max-memory", metavar="DEV=SIZE,...",
                     help="per-device cap for the device map, e.g. 0=70GiB,cpu=200GiB")
    big.add_argument("--offload-folder", type=Path, metavar="DIR",
                     help="where weights that fit no device are offloaded (disk)")
    big.add_argument("--quantization", choices=QUANTIZATIONS,
                     help="quantize while loading (bnb-4bit, bnb-8bit: bitsandbytes; fp8: a GPU "
                          "of compute capability 8.9+); a pre-quantized checkpoint needs none")
    parser.add_argument("--name", help="model name in the ModelSpec (default: folder or config)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="trace file to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``moe-trace record``; MoeLabError for user mistakes, 130 when interrupted."""
    from moe_offload_lab.traces.record.prompts import load_prompts, load_tokenizer
    from moe_offload_lab.traces.record.recorder import RecordSettings, record_requests

    settings = RecordSettings(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, lookahead=args.lookahead,
        features=args.features, feature_seed=args.feature_seed, temperature=args.temperature,
        seed=args.seed, stop_at_eos=not args.no_stop_at_eos)
    settings.check()
    output: Path = args.output
    if output.is_dir():
        raise ConfigError(f"output {output} is a directory")
    prompts = load_prompts(args.prompts)
    model, name, source = _load_model(args)
    tokenizer = load_tokenizer(args.model, int(model.config.vocab_size))
    work_dir = output.with_name(output.name + ".parts")
    provenance = {"dataset": {"prompts_file": args.prompts.name, "prompts": len(prompts)},
                  "model_source": source}
    try:
        recording = record_requests(model, prompts, tokenizer, settings,
                                    model_name=args.name or name, provenance=provenance,
                                    work_dir=work_dir, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; finished batches are kept in {work_dir}, run the same command "
              f"again to resume", file=sys.stderr)
        return 130
    trace = recording.trace
    trace.save(output)
    import shutil

    shutil.rmtree(work_dir, ignore_errors=True)
    print(f"wrote {output}: {trace.num_tokens} tokens ({int(trace.phase.sum())} decode) in "
          f"{len(prompts)} requests, model {trace.spec.name} ({trace.spec.num_moe_layers} MoE "
          f"layers, {trace.spec.num_experts} experts, top-{trace.spec.top_k}), lookahead "
          f"distances {trace.lookahead_distances or 'none'}, features "
          f"{'none' if trace.features is None else trace.features.shape[2]}")
    return 0


def _load_model(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    from moe_offload_lab.traces.record.loading import (
        load_checkpoint,
        load_random,
        parse_device_map,
        parse_max_memory,
    )
    from moe_offload_lab.traces.record.tiny import config_from_spec

    if args.config is not None:
        placed = [f for f in ("device_map", "max_memory", "offload_folder", "quantization")
                  if getattr(args, f, None) is not None]
        if placed:
            raise ConfigError(f"--{placed[0].replace('_', '-')} applies to checkpoints, not to "
                              f"--config random models")
        config, name = config_from_spec(args.config)
        model = load_random(config, args.seed, args.device, args.dtype)
        return model, name, {"kind": "random weights", "config": name, "weight_seed": args.seed}
    model = load_checkpoint(args.model, args.device, args.dtype,
                            device_map=parse_device_map(args.device_map),
                            max_memory=parse_max_memory(args.max_memory),
                            offload_folder=args.offload_folder, quantization=args.quantization)
    name = args.model.resolve().name
    return model, name, {"kind": "checkpoint", "folder": name}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m moe_offload_lab.traces.record.cli``); same as
    ``moe-trace record``."""
    from moe_offload_lab.traces.errors import run_command

    parser = argparse.ArgumentParser(prog="moe-trace")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_command("moe-trace", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
