"""``moe-policy``: list, show, eval; user errors end with one line and status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from moe_offload_lab.policies.cli import main
from policy_testing import random_trace


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("traces") / "toy.parquet"
    random_trace(6, 64, 4, 8, 2, lookahead=(1, 2), error=0.2).save(path)
    return path


def test_list_and_show(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "lru" in out and "belady" in out and "[upper bound]" in out
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "oracle", "description"} == set(rows[0])
    assert main(["show", "prophet"]) == 0
    assert "confidence" in capsys.readouterr().out


def test_eval_text(trace_path: Path, capsys) -> None:
    assert main(["eval", str(trace_path), "--policy", "lookahead-budgeted",
                 "--cache-fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "hit ratio" in out and "precision" in out and "topk_acc" in out


def test_eval_json(trace_path: Path, capsys) -> None:
    args = ["eval", str(trace_path), "--policy", "gate-lookahead", "--cache-slots", "10",
            "--batch", "4", "--horizon", "2", "--json"]
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["trace"] == str(trace_path)
    assert payload["batch"] == 4 and payload["cache"]["slots"] == 10
    assert payload["prediction"]["horizon"] == 2
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == payload  # deterministic


@pytest.mark.parametrize("args, message", [
    (["eval", "missing.parquet", "--policy", "lru"], "no such file"),
    (["eval", "{trace}", "--policy", "no-such-policy"], "unknown policy"),
    (["eval", "{trace}", "--policy", "lru", "--cache-slots", "1"], "smaller than one layer"),
    (["eval", "{trace}", "--policy", "lru", "--cache-fraction", "0.001"], "smaller than one"),
    (["eval", "{trace}", "--policy", "lru", "--cache-fraction", "1.5"], "cache-fraction"),
    (["eval", "{trace}", "--policy", "lru", "--cache-slots", "999"], "exceeds"),
    (["eval", "{trace}", "--policy", "lru", "--batch", "0"], "batch"),
    (["eval", "{trace}", "--policy", "lru", "--horizon", "0"], "horizon"),
    (["eval", "{trace}", "--policy", "lru-per-layer", "--cache-slots", "6"], "top_k"),
    (["eval", "{trace}", "--policy", "lru", "--cache-slots", "4", "--cache-fraction", "0.5"],
     "not allowed"),
])
def test_user_errors(trace_path: Path, capsys, args: list[str], message: str) -> None:
    args = [a.replace("{trace}", str(trace_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        code = main(args)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_broken_trace_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    assert main(["eval", str(bad), "--policy", "lru"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_console_script(trace_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "moe_offload_lab.policies.cli", "eval",
                           str(trace_path), "--policy", "lru", "--json"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["policy"] == "lru"
