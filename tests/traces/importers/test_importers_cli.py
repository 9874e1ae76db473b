"""``moe-trace import`` / ``export`` end to end through the CLI module."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers.cli import add_parsers, main


@pytest.fixture
def saved(mixed_trace, tmp_path):
    path = tmp_path / "in.parquet"
    mixed_trace.save(path)
    return path


@pytest.mark.parametrize("fmt, name", [("csv", "t.csv"), ("npy", "t.npz"),
                                       ("megatron", "t.jsonl")])
def test_export_then_import_restores_the_trace(fmt, name, saved, mixed_trace, tiny_yaml,
                                               tmp_path, capsys):
    out = tmp_path / name
    assert main(["export", "--to", fmt, str(saved), "-o", str(out)]) == 0
    back_path = tmp_path / "back.parquet"
    assert main(["import", "--from", fmt, str(out), "--model", str(tiny_yaml),
                 "-o", str(back_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    back = Trace.load(back_path)
    for field in ("request_id", "position", "phase", "expert_ids", "gate_weights"):
        assert np.array_equal(getattr(back, field), getattr(mixed_trace, field)), field
    assert back.spec == mixed_trace.spec


def test_vllm_and_moe_infinity_through_the_cli(saved, mixed_trace, tiny_yaml, tmp_path):
    routed = tmp_path / "routed.npz"
    assert main(["export", "--to", "vllm", "--all-layers", str(saved), "-o", str(routed)]) == 0
    assert np.load(routed)["routed_experts"].shape[1] == mixed_trace.spec.num_layers
    back = tmp_path / "v.parquet"
    assert main(["import", "--from", "vllm", str(routed), "--model", str(tiny_yaml),
                 "-o", str(back)]) == 0
    assert Trace.load(back).num_tokens == mixed_trace.num_tokens
    eam = tmp_path / "eam.npy"
    assert main(["export", "--to", "moe-infinity", str(saved), "-o", str(eam)]) == 0
    assert main(["import", "--from", "moe-infinity", str(eam), "--model", str(tiny_yaml),
                 "-o", str(back)]) == 0
    assert Trace.load(back).provenance["source"] == "moe-infinity-import"


def test_a_bundled_model_name_and_a_lengths_file(tmp_path):
    routed = np.tile(np.array([[0, 1], [2, 3]], np.int16), (5, 16, 1))[:5, :32]  # [5, 32, 2]
    path = tmp_path / "routed.npy"
    np.save(path, routed)
    listing = tmp_path / "lengths.txt"
    listing.write_text("3 2\n2 1\n")
    out = tmp_path / "t.parquet"
    assert main(["import", "--from", "vllm", str(path), "--model", "mixtral-8x7b",
                 "--lengths", str(listing), "-o", str(out)]) == 0
    trace = Trace.load(out)
    assert trace.request_id.tolist() == [0, 0, 0, 1, 1]
    assert trace.phase.tolist() == [0, 0, 1, 0, 1]


def test_megatron_rank_files_and_a_hugging_face_config(tiny_spec, tmp_path, capsys):
    """Two pipeline-stage files of a training run with micro-batches of 2 sequences, and the
    model given as a config.json (Qwen3-MoE-style with a dense first block)."""
    from megatron_writer import training_files
    from test_megatron import batches

    config = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
              "num_hidden_layers": 4, "mlp_only_layers": [0], "num_experts": 6,
              "num_experts_per_tok": 2, "hidden_size": 8, "moe_intermediate_size": 8,
              "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2,
              "vocab_size": 64, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    paths = training_files(tmp_path, batches(), 4, tiny_spec.moe_layer_indices, 6, 2,
                           pipeline=2)
    out = tmp_path / "t.parquet"
    assert main(["import", "--from", "megatron", *map(str, paths), "--micro-batch-size", "2",
                 "--model", str(tmp_path / "config.json"), "-o", str(out)]) == 0
    assert "(+1 files)" in capsys.readouterr().out
    trace = Trace.load(out)
    assert trace.spec.moe_layer_indices == (1, 2, 3) and trace.spec.name == tmp_path.name
    assert len(trace.request_ids()) == 2 * 3 * 2  # iterations x micro-batches x sequences


def test_a_dense_config_json_is_one_clear_error(tmp_path, capsys):
    routed = tmp_path / "r.npy"
    np.save(routed, np.zeros((2, 2, 2), np.int16))
    dense = tmp_path / "llama" / "config.json"
    dense.parent.mkdir()
    dense.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2,
                                 "hidden_size": 8, "intermediate_size": 16}))
    for model in (str(dense), str(dense.parent)):
        assert main(["import", "--from", "vllm", str(routed), "--model", model,
                     "-o", str(tmp_path / "x.parquet")]) == 2
        err = capsys.readouterr().err.strip()
        assert "not a Mixture-of-Experts config (model_type 'llama'" in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists()


def test_add_parsers_plugs_into_a_host_parser(saved, tmp_path):
    parser = argparse.ArgumentParser(prog="moe-trace")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate")
    add_parsers(sub)
    args = parser.parse_args(["export", "--to", "csv", str(saved), "-o", str(tmp_path / "a.csv")])
    assert args.command == "export" and args.handler(args) == 0
    assert (tmp_path / "a.csv").read_text().startswith(
        "request_id,position,phase,layer,rank,expert,gate")


def bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"step": 0, "layer": 1, "topk": 2, "top_indices": [[0, 1]]})
                    + "\n{oops\n")
    return path


@pytest.mark.parametrize("argv, message", [
    (["import", "--from", "hdf5", "IN", "--model", "mixtral-8x7b", "-o", "OUT"],
     "unknown import format 'hdf5'"),
    (["import", "--from", "csv", "IN", "IN", "--model", "mixtral-8x7b", "-o", "OUT"],
     "several apply to megatron only"),
    (["import", "--from", "csv", "IN", "--micro-batch-size", "2", "--model", "mixtral-8x7b",
      "-o", "OUT"], "--micro-batch-size applies to --from megatron only"),
    (["export", "--to", "hdf5", "TRACE", "-o", "OUT"], "unknown export format 'hdf5'"),
    (["import", "--from", "csv", "missing.csv", "--model", "mixtral-8x7b", "-o", "OUT"],
     "missing.csv: no such file"),
    (["import", "--from", "csv", "IN", "--model", "gpt-9", "-o", "OUT"], "unknown model 'gpt-9'"),
    (["import", "--from", "megatron", "JSONL", "--model", "TINY", "-o", "OUT"],
     "bad.jsonl:2: malformed JSON"),
    (["import", "--from", "csv", "IN", "--model", "TINY", "--lengths", "IN", "-o", "OUT"],
     "--lengths applies to --from vllm only"),
    (["export", "--to", "csv", "--all-layers", "TRACE", "-o", "OUT"],
     "--all-layers applies to --to vllm or eplb only"),
    (["export", "--to", "csv", "missing.parquet", "-o", "OUT"], "missing.parquet: no such file"),
    (["export", "--to", "csv", "TRACE", "-o", "."], "cannot write"),
])
def test_errors_are_one_line_exit_2_and_write_nothing(argv, message, saved, tiny_yaml, tmp_path,
                                                      capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("request_id,position,layer,rank,expert\n")
    names = {"IN": "in.csv", "OUT": "out.file", "TRACE": str(saved), "TINY": str(tiny_yaml),
             "JSONL": str(bad_jsonl(tmp_path))}
    before = set(tmp_path.iterdir())
    assert main([names.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert set(tmp_path.iterdir()) == before  # no output, no temporary file


def test_python_dash_m_runs(saved, tmp_path):
    out = tmp_path / "t.npz"
    done = subprocess.run([sys.executable, "-m", "moe_offload_lab.traces.importers.cli", "export",
                           "--to", "npy", str(saved), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    bad = subprocess.run([sys.executable, "-m", "moe_offload_lab.traces.importers.cli", "import",
                          "--from", "npy", str(tmp_path / "none.npz"), "--model", "mixtral-8x7b",
                          "-o", str(tmp_path / "x.parquet")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "none.npz: no such file" in bad.stderr
