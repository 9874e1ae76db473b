"""``moe-sim`` end to end (in process) and its error cases."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from moe_offload_lab.sim.cli import main
from sim_testing import quick_predictor_training


def test_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    status = main(["trace.tokens=300", f"out={out}", "policy=gate-lookahead",
                   "hardware=h100-sxm", "cache.fraction=0.25", "batch=2"])
    assert status == 0
    assert "tokens_per_s" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hardware"] == "h100-sxm" and summary["policy"] == "gate-lookahead"
    assert summary["tokens"] == 300 and summary["capacity_slots"] == 64
    assert summary["tokens_per_s"] > 0
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) == summary["steps"]
    events = pd.read_parquet(out / "events.parquet")
    assert len(events) == summary["events"]
    timeline = json.loads((out / "timeline.json").read_text())
    assert any(e.get("ph") == "X" for e in timeline["traceEvents"])


@pytest.mark.parametrize("overrides,message", [
    (["cache.slots=1"], "top-k"),
    (["cache.fraction=0"], "fraction"),
    (["hardware=no-such-gpu"], "hardware"),
    (["policy=no-such-policy"], "policy"),
    (["model=no-such-model"], "model"),
    (["hardware.link_gb_per_s=0"], "link_gb_per_s"),
    (["batch=0"], "batch"),
    (["trace.tokens=0"], "tokens"),
    (["trace.tokens=20", "prefill=false"], "nothing to simulate"),
])
def test_errors_are_one_line(overrides: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*overrides, "trace.tokens=50", f"out={tmp_path}"]
                if "trace.tokens=0" not in overrides else [*overrides, f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-sim: error:") and message in err
    assert len(err.splitlines()) == 1


LABELS = ["on-demand", "lru", "mixtral-offloading", "fiddler", "prophet", "prescope", "belady",
          "oracle"]


def test_compare_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    quick_predictor_training(tmp_path, monkeypatch)
    out = tmp_path / "cmp"
    assert main(["experiment=compare", "trace.tokens=300", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    for label in LABELS:
        assert label in printed
    table = pd.read_csv(out / "compare.csv")
    assert table["label"].tolist() == LABELS
    assert table["policy"].tolist() == ["on-demand", "lru", "mixtral-offloading", "fiddler",
                                        "prophet", "prescope", "belady", "oracle-belady"]
    assert list(table.columns) == ["label", "policy", "tpot_ms_mean", "tpot_ms_p99",
                                   "tokens_per_s", "hit_rate", "stall_s", "speedup"]
    row = table.set_index("label")
    assert row.loc["on-demand", "speedup"] == 1.0
    assert (out / "compare.md").read_text().startswith("| label | policy |")
    summaries = json.loads((out / "summaries.json").read_text())
    assert [s["label"] for s in summaries] == LABELS
    assert all(s["tokens"] == 300 and s["hardware"] == "rtx4090" for s in summaries)
    assert all(s["fits_gpu_memory"] for s in summaries)
    slots = {s["label"]: s["capacity_slots"] for s in summaries}
    # no cache: room for one layer (top-2 of one token, no prefill step larger than 8 experts)
    assert slots == {label: 8 if label == "on-demand" else 128 for label in LABELS}
    assert row.loc["on-demand", "hit_rate"] < row.loc["lru", "hit_rate"]
    # the GPU-only bounds: no GPU-only policy is faster or hits more
    assert row.loc["oracle", "tokens_per_s"] >= row.loc["lru", "tokens_per_s"]
    assert row.loc["belady", "hit_rate"] >= row.loc[["lru", "prophet"], "hit_rate"].max()
    assert (out / "compare.png").stat().st_size > 10_000


def test_compare_bad_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment=compare", "trace.tokens=50", "compare.baseline=nope",
                 f"out={tmp_path}"]) == 2
    assert "baseline" in capsys.readouterr().err


def test_no_arguments_runs_the_bundled_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    quick_predictor_training(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    printed = capsys.readouterr().out
    assert "mixtral-8x7b on rtx4090, 2000 tokens" in printed
    for label in LABELS:
        assert label in printed
    assert "need more GPU memory" not in printed  # 4-bit experts: every run fits 24 GB
    (run,) = (tmp_path / "outputs" / "compare").iterdir()
    summaries = json.loads((run / "summaries.json").read_text())
    assert all(s["cache_fraction"] == 0.5 for s in summaries[1:])
    assert (run / ".hydra" / "config.yaml").is_file()  # Hydra's record of the composed config


def test_out_alone_still_means_the_bundled_comparison(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``out=DIR`` only says where: ``moe-sim out=DIR`` is the main job, not one default run
    (checked through ``--cfg job``, which composes without running or writing)."""
    out = tmp_path / "main-job"
    assert main([f"out={out}", "--cfg", "job"]) == 0
    printed = capsys.readouterr().out
    assert "\ncompare:\n" in printed and "baseline:" in printed
    assert not out.exists()  # introspection writes nothing


def test_single_run_writes_a_figure_and_hydra_record(tmp_path: Path) -> None:
    out = tmp_path / "one"
    assert main(["trace.tokens=200", f"out={out}", "policy=fiddler"]) == 0
    assert (out / "steps.png").stat().st_size > 10_000
    assert "policy=fiddler" in (out / ".hydra" / "overrides.yaml").read_text()
    steps = pd.read_parquet(out / "steps.parquet")
    for part in ("non_expert_s", "gpu_expert_s", "cpu_expert_s", "stall_s", "policy_s"):
        assert (steps[part] >= 0).all()
    # GPU work, stalls and non-expert work happen in sequence on the GPU stream
    serial = steps["non_expert_s"] + steps["gpu_expert_s"] + steps["stall_s"]
    assert (serial <= steps["latency_s"] + 1e-9).all()


def test_trace_for_another_model_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from moe_offload_lab.traces.synthetic import generate

    path = generate("olmoe-1b-7b", tokens=64, seed=0).save(tmp_path / "olmoe.parquet")
    assert main([f"trace.path={path}", f"out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "disagrees with model 'mixtral-8x7b'" in err and "num_experts: 8 != 64" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()  # checked before Hydra makes the run folder


def test_strict_memory_and_budget_errors(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache.strict_memory=true", f"out={tmp_path}"]) == 2
    assert "do not fit in rtx4090" in capsys.readouterr().err
    assert main(["cache.gpu_memory_gb=3.5", f"out={tmp_path}"]) == 2
    assert "holds 0 experts of mixtral-8x7b" in capsys.readouterr().err
    assert main(["cache.gpu_memory_gb=99", f"out={tmp_path}"]) == 2
    assert "exceeds rtx4090" in capsys.readouterr().err


def test_bundled_real_trace_runs(tmp_path: Path) -> None:
    from moe_offload_lab.traces.bundled import load

    out = tmp_path / "real"
    assert main(["model=tiny-moe-stdlib", "trace.bundled=tiny-moe-stdlib", "policy=on-demand",
                 "cache.slots=0", f"out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"] == load(columns="routing").num_tokens
    assert summary["hit_rate"] == 0.0  # on-demand streams every expert, caches nothing


def test_expert_parallel_runs_through_moe_sim(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ep"
    assert main(["cluster=h100x8-nvswitch", "balance=eplb", "model=deepseek-v2-lite",
                 "trace.tokens=400", "batch=8", f"out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cluster"] == "h100x8-nvswitch" and summary["balance"] == "eplb"
    assert summary["ranks"] == 8 and summary["trace_tokens"] == 400
    assert summary["pool"] == "resident" and summary["fits_gpu_memory"] is True
    assert (out / "timeline.json").is_file() and (out / "layers.parquet").is_file()
    capsys.readouterr()
    assert main(["cluster=no-such-cluster", f"out={tmp_path / 'x'}"]) == 2
    assert "cluster" in capsys.readouterr().err
    assert main(["cluster=h100x8-nvswitch", "balance=nope", f"out={tmp_path / 'x'}"]) == 2
    assert "balance" in capsys.readouterr().err
    assert main(["cluster=h100x8-nvswitch", "workload=continuous", f"out={tmp_path / 'x'}"]) == 2
    assert "static batches" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
