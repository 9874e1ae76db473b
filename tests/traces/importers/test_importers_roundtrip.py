"""Every exporter followed by its importer gives back what the format can hold."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import EXPORTERS, IMPORTERS, export_trace, import_trace
from moe_offload_lab.traces.importers.counts import per_group_counts, reconstruct_tokens


def activation_counts(trace: Trace) -> np.ndarray:
    return per_group_counts(trace)[0]

EXACT = [("csv", "t.csv"), ("npy", "t.npz"), ("megatron", "t.jsonl")]


def grouped(trace: Trace) -> Trace:
    """The trace with its rows grouped by request (first appearance), as vLLM keeps them."""
    first = {}
    for i, r in enumerate(trace.request_id.tolist()):
        first.setdefault(r, i)
    order = sorted(range(trace.num_tokens), key=lambda i: first[trace.request_id[i]])
    return trace.select(np.array(order, np.int64))


def test_the_registries_cover_the_formats():
    assert set(IMPORTERS) >= {"vllm", "megatron", "sglang", "eplb", "moe-infinity", "csv", "npy"}
    assert set(EXPORTERS) >= {"vllm", "megatron", "eplb", "moe-infinity", "csv", "npy"}


@pytest.mark.parametrize("fmt, name", EXACT)
@pytest.mark.parametrize("which", ["mixed_trace", "synth_trace"])
def test_exact_formats_round_trip(fmt, name, which, request, tmp_path):
    trace = request.getfixturevalue(which)
    path = export_trace(fmt, trace, tmp_path / name)
    back = import_trace(fmt, path, trace.spec)
    for field in ("request_id", "position", "phase", "expert_ids", "gate_weights"):
        assert np.array_equal(getattr(back, field), getattr(trace, field)), field
    assert back.expert_ids.dtype == np.int16 and back.gate_weights.dtype == np.float32
    assert back.provenance["source"] == f"{'npz' if fmt == 'npy' else fmt}-import"
    assert back.provenance["input"] == name


@pytest.mark.parametrize("all_layers", [False, True])
@pytest.mark.parametrize("which", ["mixed_trace", "synth_trace"])
def test_vllm_round_trip_keeps_experts_requests_and_phases(which, all_layers, request,
                                                           tmp_path):
    trace = request.getfixturevalue(which)
    path = export_trace("vllm", trace, tmp_path / "routed.npz", all_layers=all_layers)
    with np.load(path) as archive:
        routed = archive["routed_experts"]
    assert routed.dtype == np.int16
    layers = trace.spec.num_layers if all_layers else trace.spec.num_moe_layers
    assert routed.shape == (trace.num_tokens, layers, trace.spec.top_k)
    if all_layers:
        assert not routed[:, 0].any()  # the dense block holds zeros, as in vLLM
    back = import_trace("vllm", path, trace.spec)
    want = grouped(trace)
    assert np.array_equal(back.expert_ids, want.expert_ids)
    assert np.array_equal(back.request_id, want.request_id)
    assert np.array_equal(back.phase, want.phase)
    assert np.allclose(back.gate_weights, 1 / trace.spec.top_k)
    assert "uniform" in back.provenance["gates"]
    for r in back.request_ids():  # positions are renumbered 0.. (gaps are lost)
        assert np.array_equal(back.position[back.request_id == r],
                              np.arange((back.request_id == r).sum()))


def test_vllm_npy_with_lengths_file_and_per_request_npz(mixed_trace, tmp_path):
    want = grouped(mixed_trace)
    requests, counts = np.unique(want.request_id, return_counts=True)
    order = [list(dict.fromkeys(want.request_id.tolist())).index(r) for r in requests]
    lengths = counts[np.argsort(order)]
    prompts = [int(((want.request_id == r) & (want.phase == 0)).sum())
               for r in dict.fromkeys(want.request_id.tolist())]
    npy = tmp_path / "routed.npy"
    np.save(npy, want.expert_ids.astype(np.uint16))  # vLLM's own buffer dtype
    listing = tmp_path / "lengths.txt"
    listing.write_text("# tokens prompt\n" + "".join(f"{n}, {p}\n" for n, p in
                                                      zip(lengths, prompts, strict=True)))
    back = import_trace("vllm", npy, mixed_trace.spec, lengths=listing)
    assert np.array_equal(back.expert_ids, want.expert_ids)
    assert np.array_equal(back.phase, want.phase)
    assert back.request_ids().tolist() == [0, 1, 2]

    single = import_trace("vllm", npy, mixed_trace.spec)  # no lengths: one prefill request
    assert set(single.request_id.tolist()) == {0} and not single.phase.any()

    per_request = tmp_path / "outputs.npz"
    ids = list(dict.fromkeys(want.request_id.tolist()))
    np.savez(per_request, **{f"request_{r}": want.expert_ids[want.request_id == r] for r in ids})
    back = import_trace("vllm", per_request, mixed_trace.spec)
    assert np.array_equal(back.expert_ids, want.expert_ids)
    assert np.array_equal(back.request_id, want.request_id)


@pytest.mark.parametrize("which", ["mixed_trace", "synth_trace"])
def test_moe_infinity_round_trip_keeps_the_counts(which, request, tmp_path):
    trace = request.getfixturevalue(which)
    path = export_trace("moe-infinity", trace, tmp_path / "eam.npy")
    eam = np.load(path)
    assert eam.dtype == np.float32
    assert eam.shape == (len(trace.request_ids()), trace.spec.num_moe_layers,
                         trace.spec.num_experts)
    back = import_trace("moe-infinity", path, trace.spec)
    assert np.array_equal(activation_counts(back), activation_counts(trace))
    assert np.array_equal(activation_counts(back), eam)
    assert "token identity and order" in back.provenance["lost"]
    assert back.provenance["count_only"] is True


def test_moe_infinity_accepts_empty_rows_and_all_block_layouts(tiny_spec, tmp_path):
    counts = np.zeros((3, tiny_spec.num_layers, 6), np.float32)  # row 1 is an unused slot
    counts[0, 1:] = [2, 1, 1, 0, 0, 0]  # 2 tokens x top-2 per layer
    counts[2, 1:] = [1, 1, 1, 1, 1, 1]  # 3 tokens
    path = tmp_path / "eam.npy"
    np.save(path, counts)
    back = import_trace("moe-infinity", path, tiny_spec)
    assert back.request_ids().tolist() == [0, 2]
    assert np.array_equal(activation_counts(back), counts[[0, 2]][:, 1:])


def test_reconstruction_is_exact_and_distinct():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, k, n_experts, n_layers = rng.integers(1, 20), rng.integers(1, 5), 8, 3
        ids = np.stack([np.stack([rng.choice(n_experts, k, replace=False)
                                  for _ in range(n_layers)]) for _ in range(n)])
        counts = np.stack([np.bincount(ids[:, l].ravel(), minlength=n_experts)
                           for l in range(n_layers)])
        tokens = reconstruct_tokens(counts, int(k), "test")
        assert tokens.shape == (n, n_layers, k)
        for l in range(n_layers):
            assert np.array_equal(np.bincount(tokens[:, l].ravel(), minlength=n_experts),
                                  counts[l])
            assert all(len(set(row)) == k for row in tokens[:, l].tolist())


def test_npz_defaults_fill_in_requests_positions_and_gates(tiny_spec, mixed_trace, tmp_path):
    path = tmp_path / "bare.npz"
    np.savez(path, experts=mixed_trace.expert_ids.astype(np.int64),
             request_id=mixed_trace.request_id)
    back = import_trace("npy", path, tiny_spec)
    assert np.array_equal(back.expert_ids, mixed_trace.expert_ids)
    for r in back.request_ids():
        assert np.array_equal(back.position[back.request_id == r],
                              np.arange((back.request_id == r).sum()))
    assert np.allclose(back.gate_weights, 0.5) and not back.phase.any()
    assert back.provenance["defaults_filled_in"] == ["gates", "position", "phase"]


def test_csv_without_optional_columns(tiny_spec, tmp_path):
    path = tmp_path / "t.csv"
    rows = ["request_id,position,layer,rank,expert"]
    for pos in range(2):
        for layer in range(3):
            rows += [f"4,{pos},{layer},1,{layer}", f"4,{pos},{layer},0,5"]
    path.write_text("\n".join(rows) + "\n")
    back = import_trace("csv", path, tiny_spec)
    assert back.expert_ids[:, :, 0].tolist() == [[5, 5, 5]] * 2
    assert back.expert_ids[:, :, 1].tolist() == [[0, 1, 2]] * 2
    assert np.allclose(back.gate_weights, 0.5) and back.request_id.tolist() == [4, 4]
