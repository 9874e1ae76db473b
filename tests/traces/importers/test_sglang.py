"""SGLang expert-distribution dumps, written as SGLang's recorder writes them (``sglang_writer``,
which follows sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py``): per-token
records with physical ids and -1 padding, per-pass counts, and stat ``logical_count``."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from moe_offload_lab.traces.errors import ConfigError, MoeLabError
from moe_offload_lab.traces.format import DECODE, PREFILL
from moe_offload_lab.traces.importers import import_trace
from moe_offload_lab.traces.importers.counts import per_group_counts
from sglang_writer import DECODE as DECODE_MODE
from sglang_writer import EXTEND, IDLE, MIXED, Pass, Server

# EPLB placed 8 physical experts for 6 logical ones: experts 0 and 3 have a second replica
MAP = np.tile(np.array([0, 1, 2, 3, 4, 5, 0, 3]), (4, 1))
PASSES = [
    Pass(EXTEND, [("a", 0, 5), ("b", 0, 3)]),
    Pass(DECODE_MODE, [("a", 5, 1), ("b", 3, 1)], extend=False),
    Pass(IDLE, [], extend=False),
    Pass(EXTEND, [("c", 10, 3)]),  # a prompt whose first 10 tokens hit the prefix cache
    Pass(DECODE_MODE, [("b", 4, 1), ("a", 6, 1), ("c", 13, 1)], extend=False),
    Pass(MIXED, [("a", 7, 1), ("d", 0, 2)]),  # chunked prefill mixed with a decode token
]


def server(tiny_spec):
    s = Server(tiny_spec.num_layers, tiny_spec.moe_layer_indices, 6, 2, MAP.copy())
    for p in PASSES:
        s.forward(p)
    return s


def expected(s, tiny_spec):
    """Per request: (positions, phases, logical ids [n, L, k]) in the order requests appear."""
    out: dict[str, list] = {}
    for p in PASSES:
        for name, first, n in p.segments:
            rows = out.setdefault(name, [[], [], []])
            decode = p.mode == DECODE_MODE or (p.mode == MIXED and n == 1)
            for pos in range(first, first + n):
                rows[0].append(pos)
                rows[1].append(DECODE if decode else PREFILL)
                rows[2].append(np.stack([s.logical(name, pos, b)
                                         for b in tiny_spec.moe_layer_indices]))
    return out


def test_per_token_dump_maps_physical_ids_and_links_requests(tiny_spec, tmp_path):
    s = server(tiny_spec)
    path = s.dump_per_token(tmp_path / "expert_distribution_recorder_1700000000.0_0.pt")
    assert (s.records[0]["topk_ids_of_layer"][:, :, 2:] == -1).all()  # padded to 8 with -1
    assert (s.records[0]["topk_ids_of_layer"][0] == -1).all()  # the dense block: nothing
    assert (s.records[0]["topk_ids_of_layer"] >= 6).any()  # some tokens went to replicas
    trace = import_trace("sglang", path, tiny_spec)
    want = expected(s, tiny_spec)
    assert len(trace.request_ids()) == len(want) == 4
    for r, (name, (positions, phases, ids)) in enumerate(want.items()):
        rows = trace.request_id == r
        assert trace.position[rows].tolist() == positions, name
        assert trace.phase[rows].tolist() == phases, name
        assert np.array_equal(trace.expert_ids[rows], np.stack(ids)), name
    assert trace.provenance["skipped_passes"] == 1  # the idle pass


def test_per_pass_and_stat_dumps_keep_the_per_pass_counts(tiny_spec, tmp_path):
    s = server(tiny_spec)
    exact = import_trace("sglang", s.dump_per_token(tmp_path / "t.pt"), tiny_spec)
    per_pass = import_trace("sglang", s.dump_per_pass(tmp_path / "p.pt"), tiny_spec)
    stat = import_trace("sglang", s.dump_stat(tmp_path / "s.pt", buffer_size=8), tiny_spec)
    # forward pass -> per-layer logical counts, from the real routing
    want = {}
    for i, p in enumerate(PASSES):
        counts = np.zeros((3, 6), np.int64)
        for name, first, n in p.segments:
            for pos in range(first, first + n):
                for layer, b in enumerate(tiny_spec.moe_layer_indices):
                    counts[layer, s.logical(name, pos, b)] += 1
        if counts.any():
            want[i] = counts
    for trace in (per_pass, stat):
        counts, requests = per_group_counts(trace)
        assert requests.tolist() == list(want)  # one request per non-empty pass, by pass id
        assert all(np.array_equal(c, want[r]) for c, r in zip(counts, requests, strict=True))
        assert trace.provenance["count_only"] is True
        assert "cross-layer structure of each token" in trace.provenance["synthetic"]
    assert per_group_counts(exact)[0].sum(axis=0).tolist() == sum(want.values()).tolist()
    doubled = s.dump_stat(tmp_path / "tp2.pt", buffer_size=8, ranks=2)
    again = import_trace("sglang", doubled, tiny_spec, ranks_summed=2)
    assert np.array_equal(again.expert_ids, stat.expert_ids)
    with pytest.raises(MoeLabError, match="not a multiple of ranks_summed=3"):
        import_trace("sglang", doubled, tiny_spec, ranks_summed=3)


def edit_first_record(tiny_spec, tmp_path, change):
    s = server(tiny_spec)
    change(s.records[0])
    return s.dump_per_token(tmp_path / "bad.pt")


@pytest.mark.parametrize("change, match", [
    (lambda r: r["topk_ids_of_layer"].__setitem__((1, 0, 1), -1), "fewer than top_k=2"),
    (lambda r: r["topk_ids_of_layer"].__setitem__((1, 0, 2), 3), "more than top_k=2"),
    (lambda r: r["topk_ids_of_layer"].__setitem__((1, 0, 0), 8), "physical expert 8"),
    (lambda r: r.__setitem__("positions", r["positions"][:-1]), "7 positions for 8 tokens"),
    (lambda r: r.__setitem__("extend_seq_lens", [5, 2]), "extend_seq_lens add up to 7"),
    (lambda r: r.__setitem__("topk_ids_of_layer", torch.zeros(4, 8)),
     "must be an integer [layers, tokens, width] array"),
    (lambda r: r.__setitem__("topk_ids_of_layer", torch.full((5, 8, 8), -1, dtype=torch.int32)),
     "the layer axis has 5 entries"),
])
def test_per_token_errors(change, match, tiny_spec, tmp_path):
    path = edit_first_record(tiny_spec, tmp_path, change)
    with pytest.raises(MoeLabError, match=re.escape(match)) as info:
        import_trace("sglang", path, tiny_spec)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_dump_level_errors(tiny_spec, tmp_path):
    cases = [
        ([1, 2], "expected a dict, got list"),
        ({"something": 1}, "not an SGLang expert-distribution dump"),
        ({"logical_count": torch.zeros(2, 3)}, "must be a [groups, layers, experts] array"),
        ({"logical_count": torch.zeros(2, 3, 7, dtype=torch.int32)}, "7 experts per layer"),
        ({"records": [], "last_physical_to_logical_map": torch.full((4, 8), 9)},
         "names a logical expert outside [0, 6)"),
    ]
    for i, (obj, match) in enumerate(cases):
        path = tmp_path / f"d{i}.pt"
        torch.save(obj, path)
        with pytest.raises(MoeLabError, match=re.escape(match)):
            import_trace("sglang", path, tiny_spec)
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a torch file" * 4)
    with pytest.raises(MoeLabError, match="not a readable torch.save file"):
        import_trace("sglang", path, tiny_spec)
    with pytest.raises(ConfigError, match="ranks_summed applies to stat dumps"):
        import_trace("sglang", server(tiny_spec).dump_per_token(tmp_path / "t.pt"), tiny_spec,
                     ranks_summed=2)


def test_without_torch_one_clear_error(tiny_spec, tmp_path, monkeypatch):
    path = server(tiny_spec).dump_stat(tmp_path / "s.pt", buffer_size=8)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ConfigError, match="needs torch; install the record extra"):
        import_trace("sglang", path, tiny_spec)
