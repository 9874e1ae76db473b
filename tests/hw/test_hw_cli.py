"""``moe-hw run`` end to end on the CPU twin, and its error cases."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from moe_offload_lab.hw.cli import main


def test_run_writes_the_simulator_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    out = tmp_path / "hw"
    assert main(["run", "--model", "mixtral-8x7b", "--layers", "2", "--hidden", "64",
                 "--intermediate", "96", "--policy", "lru", "--slots", "6", "--tokens", "40",
                 "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"] == 40 and summary["hit_rate"] is not None
    events = pd.read_parquet(out / "events.parquet")
    copies = events[events["kind"] == "copy"]
    assert len(copies) > 0 and summary["h2d_bytes"] == int(copies["bytes"].sum())
    assert (out / "timeline.json").is_file() and (out / "steps.parquet").is_file()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["run", "--model", "no-such-model", "-o", "x"], "model"),
    (["run", "--layers", "2", "--hidden", "64", "--intermediate", "96", "--slots", "1",
      "-o", "x"], "top-k"),
    (["run", "--device", "tpu", "--layers", "2", "--hidden", "64", "--intermediate", "96",
      "--slots", "4", "-o", "x"], "device"),
    (["frobnicate"], "unknown command"),
])
def test_errors_are_one_line(argv: list[str], message: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-hw: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_live_runs_a_tiny_hf_model(tmp_path: Path) -> None:
    out = tmp_path / "live"
    assert main(["live", "--model", "tiny-mixtral", "--prompt", "def main(", "--policy", "lru",
                 "--slots", "6", "--max-new-tokens", "3", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "live" and summary["h2d_bytes"] > 0
