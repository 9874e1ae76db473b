"""The bundled FLAME-MoE-290M traces: what they hold, and the simulator replays them."""

from __future__ import annotations

import json

import numpy as np
from moe_offload_lab.traces import bundled
from moe_offload_lab.traces.catalog import load_model


def test_the_stream_and_the_first_positions_are_the_real_model_shape():
    spec = load_model("flame-moe-290m")
    assert (spec.num_layers, spec.num_moe_layers, spec.num_experts, spec.top_k,
            spec.num_shared_experts) == (9, 8, 64, 6, 2)
    stream = bundled.load("flame-moe-290m")
    assert stream.spec == spec and stream.num_tokens == 2048
    # cut after the end-of-text at row 1120 and into windows of at most 512 tokens
    assert np.bincount(stream.request_id).tolist() == [512, 512, 97, 512, 415]
    assert stream.expert_ids[0, 0].tolist() == [34, 28, 21, 47, 3, 12]  # the dataset card's row
    assert stream.provenance["dataset"]["license"] == "Apache-2.0"
    first10 = bundled.load("flame-moe-290m-first10")
    assert first10.num_tokens == 640 and np.unique(first10.request_id).size == 64
    # sequences 0..3 of the per-position files are rows s * 512 + p of the stream
    for s in range(4):
        rows = first10.request_id == s
        np.testing.assert_array_equal(first10.expert_ids[rows], stream.expert_ids[s * 512:
                                                                                 s * 512 + 10])


def test_the_licence_ships_beside_the_traces():
    licence = bundled.path("flame-moe-290m").with_name("flame-moe-290m.LICENSE.txt")
    assert "Apache License" in licence.read_text()


def test_moe_sim_replays_the_bundled_flame_trace(tmp_path):
    from moe_offload_lab.sim.cli import main

    out = tmp_path / "run"
    assert main(["model=flame-moe-290m", "trace.bundled=flame-moe-290m", "cache.fraction=0.25",
                 f"out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 < summary["hit_rate"] < 1.0
