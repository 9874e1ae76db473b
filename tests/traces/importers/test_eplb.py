"""EPLB load matrices ``[layers, logical experts]`` written and read back.

The layout is the ``weight`` argument of ``rebalance_experts`` in deepseek-ai/EPLB ``eplb.py``
(its README builds it with ``torch.tensor([[90, 132, ...], [20, 107, ...]])``); SGLang's
``logical_count`` sizes the layer axis by every block (``--all-layers``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moe_offload_lab.traces.errors import MoeLabError
from moe_offload_lab.traces.importers import export_trace, import_trace
from moe_offload_lab.traces.importers.counts import per_group_counts
from moe_offload_lab.traces.spec import ModelSpec

# The example load matrix of deepseek-ai/EPLB's README: 2 MoE layers of 12 logical experts.
README_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                 [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]


def layer_counts(trace):
    return per_group_counts(trace)[0].sum(axis=0)  # [L, E]


@pytest.mark.parametrize("name", ["load.npy", "load.pt", "load.csv"])
def test_export_then_import_keeps_the_loads(name, synth_trace, tmp_path):
    path = export_trace("eplb", synth_trace, tmp_path / name)
    if name.endswith(".npy"):
        weight = np.load(path)
    elif name.endswith(".pt"):
        weight = torch.load(path, weights_only=True).numpy()  # what rebalance_experts takes
    else:
        weight = np.loadtxt(path, delimiter=",", dtype=np.int64)
    want = layer_counts(synth_trace)
    assert weight.shape == (synth_trace.spec.num_moe_layers, synth_trace.spec.num_experts)
    assert np.array_equal(weight, want)
    back = import_trace("eplb", path, synth_trace.spec)
    assert np.array_equal(layer_counts(back), want)
    assert back.num_tokens == synth_trace.num_tokens and back.provenance["count_only"]


def test_all_layers_export_has_zero_rows_for_dense_blocks(synth_trace, tmp_path):
    path = export_trace("eplb", synth_trace, tmp_path / "load.npy", all_layers=True)
    weight = np.load(path)
    assert weight.shape[0] == synth_trace.spec.num_layers and not weight[0].any()
    assert np.array_equal(import_trace("eplb", path, synth_trace.spec).expert_ids.shape[1:],
                          synth_trace.expert_ids.shape[1:])


def test_the_readme_example_is_not_one_window_of_counts(tmp_path):
    """The README's rows sum to 1033 and 1156 token-expert pairs: no set of tokens (each
    picking top_k experts in both layers) gives them, and the import says so."""
    spec = ModelSpec(name="eplb-example", num_layers=2, num_experts=12, top_k=1, hidden_size=8,
                     expert_intermediate_size=8)
    path = tmp_path / "readme.pt"
    torch.save(torch.tensor(README_WEIGHT), path)
    with pytest.raises(MoeLabError, match="layer 1 counts 1156 activations, layer 0 1033"):
        import_trace("eplb", path, spec)


@pytest.mark.parametrize("text, match", [
    ("1,2,3,4,5,6\n1,2\n", ":2: 2 loads, the first line has 6"),
    ("1,x,3\n", ":1: expected numbers"),
    ("# nothing\n", "no load row"),
    ("0.5,0.5,1,0,0,0\n" * 3, "not whole token counts"),
    ("1,1,1,1,1,1\n" * 2, "the layer axis has 2 entries"),
])
def test_bad_text_matrices(text, match, tiny_spec, tmp_path):
    path = tmp_path / "load.csv"
    path.write_text(text)
    with pytest.raises(MoeLabError, match=match) as info:
        import_trace("eplb", path, tiny_spec)
    assert str(path) in str(info.value)


def test_wrong_suffix_and_shape(tiny_spec, mixed_trace, tmp_path):
    with pytest.raises(MoeLabError, match="an EPLB load matrix is"):
        export_trace("eplb", mixed_trace, tmp_path / "load.bin")
    np.save(tmp_path / "v.npy", np.ones(6))
    with pytest.raises(MoeLabError, match="expected a .layers, logical experts. matrix"):
        import_trace("eplb", tmp_path / "v.npy", tiny_spec)
    assert not (tmp_path / "load.bin").exists()
