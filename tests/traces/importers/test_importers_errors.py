"""Bad input gives one clear line naming the file, and never a partial output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from moe_offload_lab.traces.errors import ConfigError, MoeLabError, TraceError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import export_trace, import_trace
from moe_offload_lab.traces.importers._common import atomic_write


def fails(fmt, path, spec, match, **options):
    with pytest.raises(MoeLabError) as info:
        import_trace(fmt, path, spec, **options)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and match in text, text
    return info.value


@pytest.mark.parametrize("fmt", ["vllm", "megatron", "moe-infinity", "csv", "npy"])
def test_missing_file(fmt, tiny_spec, tmp_path):
    assert isinstance(fails(fmt, tmp_path / "nothing.npz", tiny_spec, "no such file"), TraceError)


@pytest.mark.parametrize("fmt, name", [("vllm", "x.npy"), ("vllm", "x.npz"), ("npy", "x.npz"),
                                       ("moe-infinity", "x.npy")])
def test_garbage_bytes(fmt, name, tiny_spec, tmp_path):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01not numpy at all" * 10)
    fails(fmt, path, tiny_spec, "not a readable")


def test_an_empty_capture_is_an_error(tiny_spec, tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("request_id,position,layer,rank,expert\n")
    fails("csv", path, tiny_spec, "no token to import")
    np.save(tmp_path / "r.npy", np.zeros((0, 3, 2), np.int16))
    fails("vllm", tmp_path / "r.npy", tiny_spec, "no token to import")


def test_unknown_format_names(tiny_spec, mixed_trace, tmp_path):
    with pytest.raises(ConfigError, match="unknown import format 'hdf5'"):
        import_trace("hdf5", tmp_path / "x", tiny_spec)
    with pytest.raises(ConfigError, match="unknown export format 'hdf5'"):
        export_trace("hdf5", mixed_trace, tmp_path / "x")


def test_unknown_model_name(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 1, 1), np.int16))
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'"):
        import_trace("vllm", path, "gpt-9")


# ---- vLLM ---------------------------------------------------------------------------------------
def routed(tiny_spec, n=4, layers=None):
    rng = np.random.default_rng(0)
    layers = layers or tiny_spec.num_moe_layers
    return np.stack([np.stack([rng.choice(6, 2, replace=False) for _ in range(layers)])
                     for _ in range(n)]).astype(np.int16)


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 3), np.int16), "expected a [tokens, layers, top_k] array"),
    (np.zeros((4, 3, 2), np.float32), "expected integers"),
    (np.zeros((4, 3, 3), np.int16), "picks top_k=2"),
    (np.zeros((4, 5, 2), np.int16), "the layer axis has 5 entries"),
])
def test_vllm_wrong_shape_or_dtype(array, match, tiny_spec, tmp_path):
    path = tmp_path / "r.npy"
    np.save(path, array)
    fails("vllm", path, tiny_spec, match)


def test_vllm_ids_out_of_range_and_repeated(tiny_spec, tmp_path):
    ids = routed(tiny_spec)
    ids[2, 1, 0] = 6
    np.save(tmp_path / "r.npy", ids)
    fails("vllm", tmp_path / "r.npy", tiny_spec, "expert id 6 at token 2, layer 1 is outside")
    ids[2, 1] = [3, 3]
    np.save(tmp_path / "r.npy", ids)
    fails("vllm", tmp_path / "r.npy", tiny_spec, "picks an expert twice")


def test_vllm_lengths_problems(tiny_spec, tmp_path):
    path = tmp_path / "r.npy"
    np.save(path, routed(tiny_spec, n=4))
    listing = tmp_path / "lengths.txt"
    listing.write_text("2\n3\n")
    fails("vllm", path, tiny_spec, "add up to 5 tokens", lengths=listing)
    listing.write_text("2\nthree\n")
    with pytest.raises(ConfigError, match=r"lengths.txt:2: expected"):
        import_trace("vllm", path, tiny_spec, lengths=listing)
    listing.write_text("2 3\n2\n")
    with pytest.raises(ConfigError, match=r"lengths.txt:1: expected"):
        import_trace("vllm", path, tiny_spec, lengths=listing)
    with pytest.raises(MoeLabError, match="none.txt: no such file"):
        import_trace("vllm", path, tiny_spec, lengths=tmp_path / "none.txt")


def test_vllm_archive_problems(tiny_spec, mixed_trace, tmp_path):
    path = tmp_path / "r.npz"
    np.savez(path, routed_experts=routed(tiny_spec), extra=np.zeros(2))
    fails("vllm", path, tiny_spec, "unexpected array 'extra'")
    export_trace("vllm", mixed_trace, path)
    listing = tmp_path / "lengths.txt"
    listing.write_text(f"{mixed_trace.num_tokens}\n")
    fails("vllm", path, tiny_spec, "drop --lengths", lengths=listing)
    np.savez(path)
    fails("vllm", path, tiny_spec, "holds no array")


# ---- Megatron -----------------------------------------------------------------------------------
def megatron_lines(tiny_spec):
    return [json.dumps({"step": 0, "block": "decoder", "layer": block, "rank": 0,
                        "num_tokens": 2, "topk": 2, "top_indices": [[0, 1], [2, 3]]})
            for block in tiny_spec.moe_layer_indices]


@pytest.mark.parametrize("edit, match", [
    (lambda r: "{not json", ":2: malformed JSON"),
    (lambda r: "[1, 2]", ":2: expected a JSON object"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "step"}), ":2: missing field 'step'"),
    (lambda r: json.dumps({**r, "layer": 0}), ":2: layer 0 is not a MoE block"),
    (lambda r: json.dumps({**r, "topk": 3}), ":2: topk=3"),
    (lambda r: json.dumps({**r, "num_tokens": 3}), ":2: top_indices has shape (2, 2)"),
    (lambda r: json.dumps({**r, "top_indices": [[0, "a"], [1, 2]]}), ":2: field 'top_indices'"),
    (lambda r: json.dumps({**r, "top_indices": [[0, 9], [1, 2]]}), "expert id 9"),
    (lambda r: json.dumps({**r, "step": "0"}), ":2: field 'step' must be an integer"),
    # a record repeating another exactly (activation recompute) is dropped: block 2 is then
    # missing
    (lambda r: json.dumps({**r, "layer": 1}), "no step has a record for MoE layer (block) 2"),
])
def test_megatron_bad_lines(edit, match, tiny_spec, tmp_path):
    lines = megatron_lines(tiny_spec)
    lines[1] = edit(json.loads(lines[1]))
    path = tmp_path / "router_trace_rank0.jsonl"
    path.write_text("\n".join(lines) + "\n")
    fails("megatron", path, tiny_spec, match)


def test_megatron_incomplete_steps(tiny_spec, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(megatron_lines(tiny_spec)[:2]) + "\n")
    fails("megatron", path, tiny_spec, "no step has a record for MoE layer (block) 3")
    path.write_text("")
    fails("megatron", path, tiny_spec, "no decoder router record")
    lines = megatron_lines(tiny_spec)
    record = json.loads(lines[0])
    lines[0] = json.dumps({**record, "top_probs": [[0.5, 0.5], [0.5, 0.5]]})
    path.write_text("\n".join(lines) + "\n")
    fails("megatron", path, tiny_spec, "top_probs must be given for every record or for none")


# ---- MoE-Infinity -------------------------------------------------------------------------------
@pytest.mark.parametrize("row, match", [
    ([[2, 2, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0], [2, 2, 0, 0, 0, 0]], "layer 1 counts 3 activations"),
    ([[1, 1, 1, 0, 0, 0]] * 3, "3 activations per layer is not a multiple of top_k=2"),
    ([[4, 0, 0, 0, 0, 0]] * 3, "expert 0 of layer 0 is counted 4 times, more than the 2 tokens"),
    ([[2, 2, -1, 1, 0, 0]] * 3, "negative count -1"),
    ([[1.5, 2.5, 0, 0, 0, 0]] * 3, "non-integer values"),
])
def test_moe_infinity_inconsistent_counts(row, match, tiny_spec, tmp_path):
    path = tmp_path / "eam.npy"
    np.save(path, np.array([row], np.float32))
    fails("moe-infinity", path, tiny_spec, match)


def test_moe_infinity_wrong_shapes(tiny_spec, tmp_path):
    path = tmp_path / "eam.npy"
    np.save(path, np.ones((2, 3, 5), np.float32))
    fails("moe-infinity", path, tiny_spec, "5 experts per layer")
    np.save(path, np.ones((3, 6), np.float32))
    fails("moe-infinity", path, tiny_spec, "must be a [groups, layers, experts] array")
    np.save(path, np.zeros((2, 3, 6), np.float32))
    fails("moe-infinity", path, tiny_spec, "every row is empty")


# ---- CSV and NPZ --------------------------------------------------------------------------------
GOOD_CSV = ["request_id,position,phase,layer,rank,expert,gate"] + [
    f"0,0,0,{layer},{rank},{rank + layer},0.5" for layer in range(3) for rank in range(2)]


@pytest.mark.parametrize("edit, match", [
    (lambda rows: [rows[0].replace("expert", "expert_id")] + rows[1:], "missing column 'expert'"),
    (lambda rows: [rows[0] + ",note"] + [r + ",x" for r in rows[1:]], "unknown column 'note'"),
    (lambda rows: rows[:3] + ["0,0,0,1,x,1,0.5"] + rows[4:], "data row 3: rank 'x' is not an"),
    (lambda rows: rows[:-1], "has no row for layer 2, rank 1"),
    (lambda rows: rows + [rows[-1]], "has two rows for layer 2, rank 1"),
    (lambda rows: rows + ["0,0,0,3,0,1,0.5"], "data row 7: layer 3 is outside [0, 3)"),
    (lambda rows: rows[:2] + ["0,0,1,0,1,1,0.5"] + rows[3:], "data row 2: phase differs"),
    (lambda rows: rows[:2] + ["0,0,0,0,1,1,abc"] + rows[3:], "data row 2: gate is not a number"),
    (lambda rows: rows[:2] + ["0,0,0,0,1,0,0.5"] + rows[3:], "picks an expert twice"),
    (lambda rows: [], "empty file"),
])
def test_csv_bad_content(edit, match, tiny_spec, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\n".join(edit(list(GOOD_CSV))) + "\n")
    fails("csv", path, tiny_spec, match)


def test_csv_good_content_loads(tiny_spec, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\n".join(GOOD_CSV) + "\n")
    assert import_trace("csv", path, tiny_spec).num_tokens == 1


@pytest.mark.parametrize("arrays, match", [
    ({"gates": np.zeros((1, 3, 2), np.float32)}, "missing array 'experts'"),
    ({"experts": np.zeros((1, 3, 2), np.int16), "lengths": np.ones(1)}, "unknown array 'lengths'"),
    ({"experts": np.zeros((1, 3), np.int16)}, "experts has shape (1, 3)"),
    ({"experts": np.zeros((1, 3, 2), np.float64)}, "expected integers"),
    ({"experts": np.array([[[0, 1]] * 3]), "gates": np.zeros((1, 3, 1))}, "gates must be floats"),
    ({"experts": np.array([[[0, 1]] * 3]), "phase": np.array([3])}, "phase must be 0"),
    ({"experts": np.array([[[0, 1]] * 3]), "position": np.array([0, 1])}, "position has shape"),
])
def test_npz_bad_arrays(arrays, match, tiny_spec, tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, **arrays)
    fails("npy", path, tiny_spec, match)


# ---- exporters ----------------------------------------------------------------------------------
def test_exporters_refuse_what_they_cannot_hold(mixed_trace, tmp_path):
    with pytest.raises(ConfigError, match="name it \\*.npz"):
        export_trace("vllm", mixed_trace, tmp_path / "r.npy")
    with pytest.raises(ConfigError, match="name it \\*.npy"):
        export_trace("moe-infinity", mixed_trace, tmp_path / "e.npz")
    odd = Trace(mixed_trace.spec, mixed_trace.request_id, mixed_trace.position,
                1 - mixed_trace.phase, mixed_trace.expert_ids, mixed_trace.gate_weights)
    with pytest.raises(ConfigError, match="prefill token after a decode token"):
        export_trace("vllm", odd, tmp_path / "r.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"

    def broken(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
