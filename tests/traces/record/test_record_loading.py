"""Finding routers generically, and loading large or quantized checkpoints.

- Routers come from transformers' own declaration (``_can_record_outputs['router_logits']``); the
  per-architecture table is only a fallback and finds the same modules.
- ``--device-map`` / ``--max-memory`` / ``--offload-folder`` record a checkpoint whose weights
  live on disk (accelerate moves them in per module) with the same routing as in memory.
- A checkpoint saved in FP8 (DeepSeek-V3's ``quantization_config``: e4m3 weights with
  ``weight_scale_inv`` block scales) loads on the CPU, where transformers dequantizes it; the
  ModelSpec keeps the checkpoint's FP8 expert bytes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.record import RecordSettings, record_requests
from moe_offload_lab.traces.record.adapters import find_routers
from moe_offload_lab.traces.record.loading import parse_device_map, parse_max_memory
from moe_offload_lab.traces.record.tiny import build_tiny_model
from record_helpers import PROMPTS
from test_record_cli import _prompt_file, _run

SETTINGS = RecordSettings(max_new_tokens=2, batch_size=2, lookahead=1)


def _record(model):
    return record_requests(model, PROMPTS[:3], settings=SETTINGS, progress=False).trace


def _no_declaration(monkeypatch, model):
    """The model's classes without their router declaration (as custom-code models are)."""
    for module in model.modules():
        table = getattr(type(module), "_can_record_outputs", None)
        if isinstance(table, dict) and "router_logits" in table:
            monkeypatch.setattr(type(module), "_can_record_outputs",
                                {k: v for k, v in table.items() if k != "router_logits"})


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-deepseek-v3", "tiny-gpt-oss"])
def test_the_fallback_table_finds_the_same_routers(name, monkeypatch):
    model = build_tiny_model(name, seed=2)
    generic = find_routers(model)
    assert generic.source == "output-capture"
    trace = _record(model)
    assert trace.provenance["routers"]["found_by"].startswith("transformers' router-output")
    _no_declaration(monkeypatch, model)
    table = find_routers(model)
    assert table.source == "table"
    assert table.blocks == generic.blocks and table.names == generic.names
    assert all(a is b for a, b in zip(table.routers, generic.routers, strict=True))
    again = _record(model)
    np.testing.assert_array_equal(again.expert_ids, trace.expert_ids)
    np.testing.assert_array_equal(again.lookahead[1], trace.lookahead[1])
    assert again.spec == trace.spec.with_overrides(
        extra={**trace.spec.extra, "routers": "table"})


def test_a_model_neither_way_finds_is_refused(monkeypatch):
    model = build_tiny_model("tiny-glm4-moe")  # not in the fallback table
    _no_declaration(monkeypatch, model)
    with pytest.raises(ConfigError, match="declares no router .* fallback table knows only"):
        find_routers(model)


def test_disk_offloaded_checkpoint_records_the_same_routing(tmp_path, capsys):
    model = build_tiny_model("tiny-qwen2-moe", seed=4)
    folder = tmp_path / "tiny-qwen2"
    model.save_pretrained(folder)
    capsys.readouterr()
    prompts = _prompt_file(tmp_path)
    runs = {}
    for label, extra in (("memory", []),
                         ("disk", ["--device-map", "auto", "--max-memory", "cpu=40KB",
                                   "--offload-folder", tmp_path / "offload"])):
        out = tmp_path / f"{label}.parquet"
        code, _, err = _run([folder, "--prompts", prompts, "--max-new-tokens", 2,
                             "--batch-size", 2, "--lookahead", 1, *extra, "-o", out, "--quiet"],
                            capsys)
        assert code == 0, err
        runs[label] = Trace.load(out)
    disk = runs["disk"]
    assert disk.provenance["device_map"].get("disk", 0) >= 1  # weights really on disk
    np.testing.assert_array_equal(disk.expert_ids, runs["memory"].expert_ids)
    np.testing.assert_array_equal(disk.lookahead[1], runs["memory"].lookahead[1])
    np.testing.assert_allclose(disk.gate_weights, runs["memory"].gate_weights, rtol=1e-6)
    assert disk.spec == runs["memory"].spec
    assert str(tmp_path) not in json.dumps(disk.provenance)


def _fp8_checkpoint(folder):
    """A tiny DeepSeek-V3 saved as DeepSeek-V3's own checkpoint is: every projection in
    float8_e4m3fn with a float32 ``weight_scale_inv`` per 128 x 128 block (one block here),
    ``quantization_config`` ``{"quant_method": "fp8", "weight_block_size": [128, 128]}``."""
    from safetensors.torch import load_file, save_file

    build_tiny_model("tiny-deepseek-v3", seed=5).to(torch.bfloat16).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    out = {}
    for key, w in weights.items():
        if key.endswith("proj.weight") and w.dim() == 2:
            scale = w.float().abs().max().clamp(min=1e-12) / 448.0  # e4m3's largest value
            out[key] = (w.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix(".weight") + ".weight_scale_inv"] = scale.reshape(1, 1)
        else:
            out[key] = w
    save_file(out, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                     "quant_method": "fp8", "weight_block_size": [128, 128]}
    (folder / "config.json").write_text(json.dumps(config))


def test_an_fp8_checkpoint_records_on_the_cpu(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "tiny-v3-fp8"
    _fp8_checkpoint(folder)
    out = tmp_path / "out.parquet"
    code, _, err = _run([folder, "--prompts", _prompt_file(tmp_path), "--max-new-tokens", 2,
                         "-o", out, "--quiet"], capsys)
    assert code == 0, err
    trace = Trace.load(out)
    assert trace.spec.expert_bytes_per_param == pytest.approx(1.0 + 4.0 / (128 * 128))
    assert trace.provenance["quantization"].startswith("fp8 checkpoint, dequantized")
    assert trace.provenance["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert loaded.model.layers[1].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    want = record_requests(loaded, PROMPTS, settings=RecordSettings(max_new_tokens=2),
                           progress=False).trace
    np.testing.assert_array_equal(trace.expert_ids, want.expert_ids)


@pytest.mark.parametrize("extra, message", [
    (["--quantization", "bnb-4bit"], "bitsandbytes"),
    (["--quantization", "fp8"], "GPU"),
    (["--device-map", "{oops"], "--device-map is not valid JSON"),
    (["--max-memory", "cpu"], "--max-memory expects DEVICE=SIZE"),
    (["--offload-folder", "off"], "need a device map"),
])
def test_loading_errors_are_one_line(extra, message, tmp_path, capsys):
    folder = tmp_path / "m"
    build_tiny_model("tiny-mixtral").save_pretrained(folder)
    capsys.readouterr()
    out = tmp_path / "out.parquet"
    code, _, err = _run([folder, "--prompts", _prompt_file(tmp_path), *extra, "-o", out,
                         "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_placement_options_do_not_apply_to_random_models(tmp_path, capsys):
    code, _, err = _run(["--config", "tiny-mixtral", "--prompts", _prompt_file(tmp_path),
                         "--device-map", "auto", "-o", tmp_path / "o.parquet"], capsys)
    assert code == 2 and "--device-map applies to checkpoints" in err


def test_option_parsers():
    assert parse_max_memory("0=70GiB, cpu=200GiB") == {0: "70GiB", "cpu": "200GiB"}
    assert parse_device_map('{"model": "cpu"}') == {"model": "cpu"}
    assert parse_device_map("auto") == "auto" and parse_device_map(None) is None
