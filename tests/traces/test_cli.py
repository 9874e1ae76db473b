"""``moe-trace`` end to end: real files, the installed console script, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from moe_offload_lab.traces.cli import main
from moe_offload_lab.traces.format import Trace

STATS_KEYS = {
    "schema",
    "trace",
    "entropy_bits",
    "power_law_alpha",
    "traffic",
    "mutual_information_bits",
    "conditional_entropy_bits",
    "adjacent_reuse_ratio",
    "reuse_distance_tokens",
    "lru_hit_ratio",
    "lru_hit_ratio_curve",
    "belady_hit_ratio",
    "lookahead_accuracy",
}


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mixtral.parquet"
    assert (
        main(
            [
                "synth",
                "--preset",
                "mixtral-8x7b",
                "--tokens",
                "3000",
                "--seed",
                "1",
                "-o",
                str(path),
                "--quiet",
            ]
        )
        == 0
    )
    return path


def test_synth_writes_a_valid_trace(small_trace, capsys):
    trace = Trace.load(small_trace)
    assert trace.num_tokens == 3000 and trace.lookahead_distances == [1, 2, 3]
    assert main(["validate", str(small_trace)]) == 0
    assert "ok" in capsys.readouterr().out


def test_stats_json_has_the_stable_keys(small_trace, capsys):
    assert main(["stats", str(small_trace), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert STATS_KEYS <= set(stats)
    assert set(stats["belady_hit_ratio"]) == {"0.25", "0.5"}
    assert "0.5" in stats["lru_hit_ratio"] and "1" in stats["lru_hit_ratio"]
    assert set(stats["lookahead_accuracy"]) == {"1", "2", "3"}
    assert stats["belady_hit_ratio"]["0.5"] >= stats["lru_hit_ratio"]["0.5"]


def test_stats_prints_a_readable_summary(small_trace, capsys):
    assert main(["stats", str(small_trace)]) == 0
    out = capsys.readouterr().out
    for word in ("entropy", "mutual information", "LRU", "Belady", "lookahead"):
        assert word in out


def test_plot_writes_a_png(small_trace, tmp_path):
    out = tmp_path / "fig" / "stats.png"
    assert main(["plot", str(small_trace), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["validate", "missing.parquet"], "no such file"),
        (["stats", "missing.parquet"], "no such file"),
        (["synth", "--preset", "gpt-9", "-o", "x.parquet"], "unknown trace"),
        (["synth", "--tokens", "0", "-o", "x.parquet"], "at least 1"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.parquet").exists()


def test_a_damaged_trace_is_rejected_and_nothing_is_written(small_trace, tmp_path, capsys):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(small_trace.read_bytes()[:5000])
    assert main(["stats", str(broken)]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err
    out = tmp_path / "fig.png"
    assert main(["plot", str(broken), "-o", str(out)]) == 2
    assert not out.exists()


def test_installed_console_script_runs(small_trace):
    exe = shutil.which("moe-trace") or str(
        __import__("pathlib").Path(sys.executable).parent / "moe-trace"
    )
    done = subprocess.run(
        [exe, "validate", str(small_trace)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [exe, "validate", str(small_trace) + ".nope"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
