"""``moe-sim cluster=...`` and ``moe-sim experiment=probe``: every override reaches the run,
memory that does not fit is said, outputs land in a folder named after the run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from moe_offload_lab.sim.cli import compose, main, run_config
from moe_offload_lab.sim.cluster.hydra_run import cluster_config


def test_every_model_override_reaches_the_cluster_run() -> None:
    cfg = run_config(compose(["cluster=h200x8-nvswitch", "model=deepseek-v3",
                              "model.expert_bytes_per_param=1.0",
                              "model.non_expert_bytes=17000000000", "trace.tokens=300",
                              "cache.strict_memory=true", "+trace.overrides.alpha_last=1.3"]))
    config = cluster_config(cfg)
    assert config["model"]["expert_bytes_per_param"] == 1.0
    assert config["model"]["non_expert_bytes"] == 17_000_000_000
    assert config["strict_memory"] is True
    assert config["trace"]["overrides"] == {"alpha_last": 1.3}


def test_fp8_deepseek_fits_an_h200_and_bf16_is_reported(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    common = ["cluster=h200x8-nvswitch", "model=deepseek-v3", "trace.tokens=120", "batch=4",
              "balance=static"]
    assert main([*common, "model.expert_bytes_per_param=1.0", f"out={tmp_path / 'fp8'}"]) == 0
    fp8 = json.loads((tmp_path / "fp8" / "summary.json").read_text())
    assert fp8["expert_bytes_per_param"] == 1.0 and fp8["expert_bytes"] == 44_040_192
    assert fp8["fits_gpu_memory"] is True and "fits_in_gpu_memory" not in fp8
    assert "note:" not in capsys.readouterr().out
    assert main([*common, f"out={tmp_path / 'bf16'}"]) == 0  # 2 bytes per parameter
    bf16 = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert bf16["fits_gpu_memory"] is False
    assert bf16["gpu_memory_needed_gb"] > bf16["gpu_memory_gb"]
    assert "GB of weights per rank against" in capsys.readouterr().out
    assert main([*common, "cache.strict_memory=true", f"out={tmp_path / 'strict'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-sim: error:") and "do not fit" in err and "\n" not in err
    assert not (tmp_path / "strict").exists()  # refused before the run folder is made


def test_cluster_runs_are_named_after_the_cluster_and_balance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["cluster=h100x8-nvswitch", "balance=probe-history", "model=olmoe-1b-7b",
                 "trace.tokens=100", "batch=2"]) == 0
    runs = list((tmp_path / "outputs" / "cluster").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("-olmoe-1b-7b-h100x8-nvswitch-probe-history")
    assert (runs[0] / "summary.json").is_file()
    assert not (tmp_path / "outputs" / "sim").exists()  # not the offloading defaults' name


def test_probe_experiment_writes_its_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # PROBE's predictor is trained into outputs/cache here
    out = tmp_path / "probe"
    short = ["+trace.overrides.prompt_tokens={kind:fixed,mean:32,min:32,max:32}",
             "+trace.overrides.decode_tokens={kind:fixed,mean:8,min:8,max:8}"]
    assert main(["experiment=probe", "trace.tokens=600", "batch=4", *short, f"out={out}"]) == 0
    table = pd.read_csv(out / "compare.csv")
    assert table["label"].tolist() == ["static-ep", "eplb-r2", "probe", "probe-gate",
                                       "probe-oracle"]
    for column in ("imbalance_after_mean", "prefill_latency_ms_mean", "decode_tokens_per_s",
                   "prefill_speedup", "decode_speedup"):
        assert column in table and table[column].notna().all()
    assert table.loc[0, "prefill_speedup"] == 1.0 and table.loc[0, "decode_speedup"] == 1.0
    assert (out / "compare.png").stat().st_size > 0 and (out / "summaries.json").is_file()
    assert (out / "runs" / "probe" / "layers.parquet").is_file()
    printed = capsys.readouterr().out
    assert "paper 1.32x" in printed and "paper 1.26x" in printed
    summary = json.loads((out / "runs" / "probe" / "summary.json").read_text())
    assert summary["gpu"] == "h200" and summary["expert_bytes_per_param"] == 1.0
    assert summary["pool"] == "double-buffer" and summary["fits_gpu_memory"] is True
    assert "'learned'" in summary["balance_params"]  # PROBE runs its trained predictor
    assert list((tmp_path / "outputs" / "cache" / "probe-predictor").glob("*/model.pt"))
