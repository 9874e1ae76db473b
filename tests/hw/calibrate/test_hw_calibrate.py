"""Calibration on the CPU twin with tiny sizes: the written profile loads in the simulator and
its tables are used; bad inputs give one line and exit 2; the GPU path runs only with CUDA."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import yaml
from moe_offload_lab.hw.calibrate.cli import main
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.hardware import HardwareProfile, load_hardware
from moe_offload_lab.sim.measured import _KEYS, Measured
from moe_offload_lab.traces.catalog import load_model

TINY = ["model=tiny-moe-stdlib", "sizes_mb=[1,8,32]", "tokens=[8,1,2,2]", "batches=[1,4]",
        "contexts=[16,64]", "reference_context=16", "repeats=2", "warmup=1", "policy_tokens=16",
        "policies=[lru,gate-lookahead]", "progress=false"]


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "cpu-twin.yaml"
    assert main(["device=cpu", *TINY, f"out={path}", "name=cpu-twin"]) == 0
    return path


def test_profile_loads_and_simulator_uses_it(cpu_profile):
    profile = load_hardware(str(cpu_profile))
    assert profile.name == "cpu-twin"
    compute = ComputeModel(load_model("tiny-moe-stdlib"), profile)
    assert set(compute.measured_used) == {"cpu_expert", "gpu_expert", "h2d_copy", "layer_other"}
    assert compute.link_bytes_per_s > 0 and compute.link_latency_s >= 0
    assert profile.copy_latency_s > 0  # the tiny copy, measured directly
    assert compute.gpu_expert_s(4) > 0 and compute.layer_other_s(2) > 0
    # another model: the copy fit still applies, the compute tables do not
    other = ComputeModel(load_model("mixtral-8x7b"), profile)
    assert other.measured_used == ["h2d_copy"]


def test_measured_block_has_the_simulator_layout(cpu_profile):
    data = yaml.safe_load(cpu_profile.read_text())
    measured = data["measured"]
    assert set(measured) <= _KEYS
    assert measured["model"] == "tiny-moe-stdlib"
    assert measured["gpu_expert"]["tokens"] == [1, 2, 8]  # sorted, deduplicated
    parsed = Measured.parse(measured)
    latency, bandwidth = parsed.link_fit()
    assert latency >= 0 and bandwidth > 0
    prov = measured["provenance"]
    for key in ("device", "driver", "torch", "python", "date", "host"):
        assert key in prov
    assert prov["gpu_expert_measured_on"].startswith("cpu")
    tables = prov["tables"]
    assert len(tables["attention"]["seconds"]) == 2  # batches
    assert len(tables["attention"]["seconds"][0]) == 2  # contexts
    assert set(tables["policy_decision_per_layer_s"]) == {"lru", "gate-lookahead"}
    assert all(v > 0 for v in tables["policy_decision_per_layer_s"].values())
    assert prov["h2d_peak_gb_per_s"] > 0
    replay = importlib.util.find_spec("moe_offload_lab.hw.replay") is not None
    assert prov["source"] == ("executor" if replay else "module")
    if replay:
        assert len(tables["replay_layer"]["seconds"]) == 2
        other = prov["executor_layer_other"]
        assert other["batch"] == [1, 4] and all(v > 0 for v in other["other_s"])
        assert measured["layer_other"]["seconds"] == pytest.approx(
            [o + h for o, h in zip(other["other_s"], other["overhead_s"], strict=True)])
    HardwareProfile.from_dict(data)
    sidecar = json.loads((cpu_profile.parent / "cpu-twin.calibration.json").read_text())
    assert sidecar["measured"]["model"] == "tiny-moe-stdlib"
    assert not list(cpu_profile.parent.glob(".*.tmp"))


def test_base_profile_keeps_its_fields(tmp_path):
    path = tmp_path / "h100.yaml"
    assert main(["device=cpu", *TINY, "policies=[]", "base_profile=h100-sxm", f"out={path}",
                 "source=module"]) == 0
    profile = load_hardware(str(path))
    assert profile.name == "h100-sxm-calibrated"
    assert profile.gpu_tflops == load_hardware("h100-sxm").gpu_tflops
    prov = profile.measured["provenance"]
    assert prov["source"] == "module" and prov["tables"]["replay_layer"] is None
    assert prov["executor_layer_other"] is None
    attention = prov["tables"]["attention"]["seconds"]
    assert profile.measured["layer_other"]["seconds"] == [row[0] for row in attention]


@pytest.mark.parametrize(("override", "message"), [
    ("device=tpu", "unknown device"),
    ("base_profile=no-such-gpu", "unknown hardware"),
    ("model=no-such-model", "unknown model"),
    ("policies=[no-such-policy]", "no-such-policy"),
    ("tokens=[0]", "tokens"),
    ("sizes_mb=[1]", "sizes_mb"),
    ("bogus=1", "bogus"),
    ("source=guess", "source"),
    ("sizes_mb=[1,", "[1,"),
])
def test_bad_inputs_one_line_exit_2(tmp_path, capsys, override, message):
    path = tmp_path / "bad.yaml"
    assert main(["device=cpu", *TINY, f"out={path}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("moe-hw calibrate: error:")
    assert message in err
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_user_error(tmp_path, capsys):
    assert main(["device=cuda", *TINY, f"out={tmp_path / 'x.yaml'}"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_calibration(tmp_path):
    path = tmp_path / "gpu.yaml"
    assert main(["device=cuda", *TINY, f"out={path}"]) == 0
    data = yaml.safe_load(path.read_text())
    assert data["measured"]["provenance"]["device_type"] == "cuda"
    assert data["measured"]["provenance"]["sm_count"] > 0
    ComputeModel(load_model("tiny-moe-stdlib"), load_hardware(str(path)))


def test_dash_o_is_the_output_override():
    from moe_offload_lab.hw.calibrate.cli import output_override

    assert output_override(["-o", "x.yaml", "device=cpu"]) == ["out=x.yaml", "device=cpu"]
    assert output_override(["--output=y.yaml"]) == ["out=y.yaml"]
