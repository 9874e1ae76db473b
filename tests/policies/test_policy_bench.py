"""The decision-cost benchmark runs (a tiny configuration) and prints its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_policies.py"


def test_bench_smoke(capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_policies", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tokens", "16", "--batch-tokens", "32", "--policies", "lru,belady",
                        "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "mixtral b1" in out and "qwen3-30b b32" in out and "lru" in out
