"""Recorder throughput: tokens per second recorded in prefill and in decode, on a tiny model.

    python benchmarks/bench_record.py [--config tiny-mixtral] [--prompts 32] [--new-tokens 32]

Prefill throughput comes from a run with no decode step; decode throughput from the extra time a
run with ``--new-tokens`` decode steps takes, divided by the decode rows it recorded. Each is
measured with routing only and with lookahead 1..2 plus 16 features. Target on a 2-core CPU with
tiny-mixtral: prefill > 5,000 tokens/s and decode > 300 tokens/s with routing only (batch 8).
"""

from __future__ import annotations

import argparse
import time

PREFILL_TARGET, DECODE_TARGET = 5_000, 300


def _prompts(n: int) -> list[str]:
    words = ("expert routing cache prefetch layer token gate weight hidden state router "
             "mixture offload bandwidth latency decode prefill batch").split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(4 + (i % 12)))
            for i in range(n)]


def _timed_record(model, prompts, **settings):
    from moe_offload_lab.traces.record import record

    start = time.perf_counter()
    trace = record(model, prompts, progress=False, **settings)
    return trace, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny-mixtral")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch
    from moe_offload_lab.traces.record.tiny import build_tiny_model

    model = build_tiny_model(args.config)
    prompts = _prompts(args.prompts)
    _timed_record(model, prompts[:2], max_new_tokens=2)  # warm-up
    print(f"model {args.config}, {args.prompts} prompts, batch {args.batch_size}, "
          f"{args.new_tokens} new tokens, torch threads {torch.get_num_threads()}")
    print(f"{'extras':<28}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for label, extras in (("routing only", {}),
                          ("lookahead 2 + 16 features", {"lookahead": 2, "features": 16})):
        prefill, prefill_s = _timed_record(model, prompts, max_new_tokens=0,
                                           batch_size=args.batch_size, **extras)
        full, full_s = _timed_record(model, prompts, max_new_tokens=args.new_tokens,
                                     batch_size=args.batch_size, **extras)
        decode_rows = int(full.phase.sum())
        prefill_rate = prefill.num_tokens / prefill_s
        decode_rate = decode_rows / max(full_s - prefill_s, 1e-9)
        print(f"{label:<28}{prefill_rate:>15,.0f}{decode_rate:>15,.0f}")
        if not extras:
            verdicts = [f"prefill target > {PREFILL_TARGET:,}: "
                        f"{'OK' if prefill_rate > PREFILL_TARGET else 'MISSED'}",
                        f"decode target > {DECODE_TARGET:,}: "
                        f"{'OK' if decode_rate > DECODE_TARGET else 'MISSED'}"]
            print("  " + ", ".join(verdicts))


if __name__ == "__main__":
    main()
