"""Fixtures for the importer tests: a tiny model with a dense first block and two traces."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec
from moe_offload_lab.traces.synthetic import SynthConfig, generate


@pytest.fixture(scope="session")
def tiny_spec() -> ModelSpec:
    """4 blocks, block 0 dense, so MoE layers 0..2 are blocks 1..3; 6 experts, top-2."""
    return ModelSpec(name="tiny-moe", num_layers=4, num_experts=6, top_k=2, hidden_size=8,
                     expert_intermediate_size=8, first_k_dense=1)


@pytest.fixture(scope="session")
def tiny_yaml(tiny_spec, tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "tiny-moe.yaml"
    path.write_text(yaml.safe_dump(tiny_spec.to_dict()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def mixed_trace(tiny_spec) -> Trace:
    """Three interleaved requests with position gaps, prefill then decode, random gates."""
    rng = np.random.default_rng(7)
    request_id = np.array([5, 9, 5, 9, 2, 5, 2, 9, 9, 2, 5], np.int32)
    position = np.zeros(request_id.size, np.int32)
    phase = np.zeros(request_id.size, np.int8)
    for r in np.unique(request_id):
        rows = np.flatnonzero(request_id == r)
        position[rows] = np.cumsum(rng.integers(1, 3, rows.size)) - 1  # gaps allowed
        phase[rows[rows.size // 2:]] = 1
    n, n_layers, k = request_id.size, tiny_spec.num_moe_layers, tiny_spec.top_k
    ids = np.stack([np.stack([rng.choice(tiny_spec.num_experts, k, replace=False)
                              for _ in range(n_layers)]) for _ in range(n)]).astype(np.int16)
    gates = rng.random((n, n_layers, k)).astype(np.float32)
    trace = Trace(tiny_spec, request_id, position, phase, ids, gates,
                  provenance={"source": "test"})
    trace.validate()
    return trace


@pytest.fixture(scope="session")
def synth_trace() -> Trace:
    """A small synthetic DeepSeek-V2-Lite trace (block 0 dense, 26 MoE layers, top-6 of 64)."""
    return generate(SynthConfig.preset("deepseek-v2-lite"), tokens=240, seed=3)
