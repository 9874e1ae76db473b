"""Validation end to end on a tiny model (CPU twin): CSV, figure, markdown and one Perfetto
trace with both pids; the pipeline with a stand-in executor; bad inputs give one line, exit 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from moe_offload_lab.hw.validate.accuracy import overall
from moe_offload_lab.hw.validate.cells import simulate_cell
from moe_offload_lab.hw.validate.cli import main
from moe_offload_lab.hw.validate.matrix import ValidationConfig, model_spec
from moe_offload_lab.hw.validate.run import validate
from moe_offload_lab.sim.hardware import load_hardware

TINY = {"model": "tiny-moe-stdlib", "layers": 2,
        "model_overrides": {"hidden_size": 64, "expert_intermediate_size": 64},
        "trace": {"tokens": 24, "prompt_mean": 4, "decode_mean": 8}, "progress": False,
        "calibrate": {"tokens": [1, 4, 16, 64], "batches": [1, 4, 16, 64], "repeats": 2,
                      "sizes_mb": [1, 8, 32]}}
TINY_ARGS = ["model=tiny-moe-stdlib", "layers=2", "+model_overrides.hidden_size=64",
             "+model_overrides.expert_intermediate_size=64", "trace.tokens=24",
             "trace.prompt_mean=4", "trace.decode_mean=8", "progress=false",
             "+calibrate.tokens=[1,4,16,64]", "+calibrate.batches=[1,4,16,64]",
             "+calibrate.repeats=2", "+calibrate.sizes_mb=[1,8,32]"]


def _standin(spec, trace, policy, slots, batch, device, prefill=True, seed=0, hardware=None):
    """The "executor" of the pipeline test: the simulator on a datasheet profile."""
    return simulate_cell(spec, trace, policy, load_hardware("rtx4090"), slots, batch, prefill)


def _check_outputs(out, cells):
    table = pd.read_csv(out / "validation.csv")
    assert len(table) == cells
    for column in ("hw_step_ms_mean", "sim_step_ms_mean", "rel_err_step_ms_mean",
                   "hw_step_ms_p99", "sim_step_ms_p99", "rel_err_step_ms_p99"):
        assert table[column].notna().all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["median_abs_rel_err_step_ms_mean"] == pytest.approx(
        overall(table)["median_abs_rel_err_step_ms_mean"])
    assert (out / "validation.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "validation.md").read_text()
    assert "| policy | cache |" in text and "Median absolute error" in text
    timeline = json.loads((out / "timeline.json").read_text())
    complete = [e for e in timeline["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in complete} == {0, 1}
    assert not list(out.glob(".*.tmp"))
    return table, summary, text


def test_pipeline_with_standin_executor(tmp_path):
    cfg = ValidationConfig(**TINY, policies=["lru", "lfu", "fifo", "gate-lookahead"],
                           cache={"fractions": [0.25, 0.5, 0.75]}, batches=[1, 4],
                           device="cpu", out=str(tmp_path), warmup=False)
    result = validate(cfg, measure=_standin)
    table, summary, text = _check_outputs(tmp_path, 4 * 3 * 2)
    assert summary["cpu_twin"] is True and "CPU twin" in text
    # same decisions on both sides for the on-demand policies (the stand-in differs only in
    # timing); gate-lookahead's prefetches and cancellations depend on timing, so its bytes may not
    on_demand = table[table["policy"].isin(["lru", "lfu", "fifo"])]
    assert len(on_demand) == 18
    assert (on_demand["hw_h2d_bytes"] == on_demand["sim_h2d_bytes"]).all()
    assert (table["rel_err_step_ms_mean"] != 0).any()
    assert result.profile.measured["model"] == "tiny-moe-stdlib"
    assert (tmp_path / "profile.yaml").is_file()


def test_end_to_end_with_the_executor(tmp_path):
    pytest.importorskip("moe_offload_lab.hw.replay")
    args = [*TINY_ARGS, "device=cpu", "policies=[lru,gate-lookahead]", "cache.fractions=[0.5]",
            "batches=[1,4]", f"out={tmp_path}"]
    assert main(args) == 0
    table, summary, _ = _check_outputs(tmp_path, 2 * 1 * 2)
    assert (table["hw_step_ms_mean"] > 0).all() and (table["sim_step_ms_mean"] > 0).all()
    assert summary["profile"]


def test_model_shrinks_and_keeps_its_name():
    spec = model_spec(ValidationConfig(model="mixtral-8x7b", layers=4))
    assert spec.name == "mixtral-8x7b" and spec.num_moe_layers == 4
    assert spec.non_expert_bytes == int(3210000000 * 4 / 32)


@pytest.mark.parametrize(("override", "message"), [
    ("device=tpu", "unknown device"),
    ("profile=no-such-gpu", "unknown hardware"),
    ("model=no-such-model", "unknown model"),
    ("policies=[no-such-policy]", "no-such-policy"),
    ("cache.gpu_memory_gb=[0.0000001]", "one layer needs"),
    ("layers=0", "layers"),
    ("batches=[]", "batches"),
    ("repeats=0", "repeats"),
    ("bogus=1", "bogus"),
])
def test_bad_inputs_one_line_exit_2(tmp_path, capsys, override, message):
    args = [*TINY_ARGS, "device=cpu", "profile=rtx4090", f"out={tmp_path / 'out'}", override]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("moe-hw validate: error:")
    assert message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_user_error(tmp_path, capsys):
    assert main([*TINY_ARGS, "device=cuda", f"out={tmp_path}"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_end_to_end_on_cuda(tmp_path):
    pytest.importorskip("moe_offload_lab.hw.replay")
    args = [*TINY_ARGS, "device=cuda", "policies=[lru]", "cache.fractions=[0.5]",
            "batches=[1]", f"out={tmp_path}"]
    assert main(args) == 0
    _check_outputs(tmp_path, 1)


def test_cache_sizes_from_fractions_and_budgets():
    from moe_offload_lab.hw.validate.matrix import cache_sizes

    spec = model_spec(ValidationConfig(model="mixtral-8x7b", layers=4))
    hardware = load_hardware("h100-sxm")
    by_fraction = cache_sizes(ValidationConfig(cache={"fractions": [0.25, 1.0]}), spec, hardware)
    assert by_fraction == [("f0.25", 8), ("f1", 32)]
    resident_gb = spec.non_expert_bytes / 1e9
    budget = round(resident_gb + 4 * spec.expert_bytes / 1e9 + 0.01, 3)
    sizes = cache_sizes(ValidationConfig(cache={"gpu_memory_gb": [budget]}), spec, hardware)
    assert sizes == [(f"{budget:g}GB", 4)]
