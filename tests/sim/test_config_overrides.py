"""Every override reaches the run it configures: each option of each config group, composed
with Hydra (``conf/config.yaml``) and overrides, and the prepared run (:func:`sim.run.prepare`,
or the run's own result where only the run knows) checked to carry the overridden values.
Settings the run would not use are refused (tests/test_bad_input.py has those cases).
"""

from __future__ import annotations

import pytest
from moe_offload_lab.sim.cli import checked_run_config
from moe_offload_lab.sim.run import prepare, simulate
from moe_offload_lab.traces.catalog import conf_dir

MODELS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (conf_dir() / "hardware").glob("*.yaml"))
POLICIES = sorted(p.stem for p in (conf_dir() / "policy").glob("*.yaml"))


def _prepared(*overrides: str):  # noqa: ANN202 - sim.run.Prepared
    return prepare(checked_run_config(list(overrides)))


@pytest.mark.parametrize("model", MODELS)
def test_model_overrides_reach_the_spec(model: str) -> None:
    extra = ["trace.bundled=tiny-moe-stdlib"] if model == "tiny-moe-stdlib" else []
    ready = _prepared(f"model={model}", "model.expert_bytes_per_param=0.3125",
                      "cache.slots=null", "cache.fraction=1.0", *extra)
    assert ready.spec.name == model
    assert ready.spec.expert_bytes_per_param == 0.3125
    assert ready.memory.expert_bytes == ready.spec.expert_bytes  # sized from the override
    assert ready.memory.slots == ready.spec.num_expert_keys


@pytest.mark.parametrize("hardware", HARDWARE)
def test_hardware_overrides_reach_the_profile(hardware: str) -> None:
    ready = _prepared(f"hardware={hardware}", "hardware.link_gb_per_s=3.5",
                      "hardware.copy_latency_s=0.001", "hardware.gpu_mem_gib=77")
    assert ready.hardware.name == hardware
    assert ready.hardware.link_gb_per_s == 3.5 and ready.hardware.copy_latency_s == 0.001
    assert ready.memory.gpu_bytes == ready.hardware.gpu_mem_bytes == 77 * 2**30


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_overrides_reach_the_policy(policy: str) -> None:
    extra = (["model=tiny-moe-stdlib", "trace.bundled=tiny-moe-stdlib"]
             if policy.startswith("learned-") else [])
    ready = _prepared(f"policy={policy}", "policy.seed=7", "policy.horizon=2", *extra)
    assert ready.policy.config.seed == 7 and ready.policy.config.horizon == 2
    assert ready.policy.config.name == policy


def test_workload_overrides_reach_the_run() -> None:
    static = _prepared("batch=3").workload
    assert (static.kind, static.max_batch) == ("static", 3)
    cont = _prepared("workload=continuous", "workload.max_batch=5", "workload.rate_per_s=3.5",
                     "workload.chunk=16", "workload.seed=4").workload
    assert (cont.kind, cont.max_batch, cont.rate_per_s, cont.chunk, cont.seed) == (
        "continuous", 5, 3.5, 16, 4)
    unset = _prepared("workload=continuous", "workload.max_batch=null", "batch=6").workload
    assert unset.max_batch == 6  # null max_batch: the static batch size


def test_cache_link_host_overrides_reach_the_run() -> None:
    ready = _prepared("cache.slots=40", "cache.preload=true", "link.chunk_mb=8",
                      "host.dram_gib=10")
    assert ready.memory.slots == 40 and ready.chunk_mb == 8
    assert ready.host_dram_experts == int(10 * 2**30 // ready.spec.expert_bytes)
    budget = _prepared("cache.slots=null", "cache.gpu_memory_gb=20")
    assert budget.memory.slots == int((20e9 - budget.memory.resident_bytes)
                                      // budget.spec.expert_bytes)
    assert _prepared("cache.fraction=0.25").memory.slots == round(0.25 * 256)
    with pytest.raises(Exception, match="do not fit"):
        _prepared("cache.fraction=1.0", "cache.strict_memory=true")


def test_trace_and_run_overrides_reach_the_result() -> None:
    """What only the run knows: the trace it generated, prefill and the timeline cap."""
    common = ["trace.tokens=600", "prefill=false", "model=olmoe-1b-7b"]
    result = simulate(checked_run_config([*common, "trace.seed=3", "timeline_events=77"]))
    summary = result.summary
    assert summary["model"] == "olmoe-1b-7b" and 0 < summary["tokens"] < 600  # decode only
    assert summary["tokens"] == summary["steps"]  # batch 1 without prefill: a token a step
    assert result.timeline_events == 77
    other = simulate(checked_run_config([*common, "trace.seed=4"]))
    assert not result.steps.equals(other.steps)  # the seed reached the generator


def test_comparison_runs_carry_the_overrides() -> None:
    from moe_offload_lab.sim.compare import run_configs

    cfg = checked_run_config(["experiment=compare", "hardware=h100-sxm", "cache.fraction=0.25",
                              "trace.tokens=300", "model.expert_bytes_per_param=0.5"])
    runs = run_configs(cfg)
    assert {one.hardware["name"] for one in runs.values()} == {"h100-sxm"}
    assert {one.model["expert_bytes_per_param"] for one in runs.values()} == {0.5}
    assert runs["lru"].cache["fraction"] == 0.25 and runs["on-demand"].cache["slots"] == 0
    assert all(one.trace["tokens"] == 300 for one in runs.values())
