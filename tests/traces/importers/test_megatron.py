"""Megatron-Core router traces as Megatron writes them: training with micro-batches and
activation recompute, pipeline stages, sequence-parallel ranks, inference by the hook and the
routing-replay sink paths.

The files are written by ``megatron_writer.py``, which follows NVIDIA/Megatron-LM
``megatron/core/transformer/moe/router_trace.py`` (RouterTracer), ``megatron/training/
training.py`` (``advance_step(iteration)``) and ``megatron/core/inference/
text_generation_controllers/text_generation_controller.py`` (the sink path with
``layer_ids = [router.layer_number ...]``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from megatron_writer import (
    inference_hook_file,
    inference_sink_file,
    one_f_one_b,
    route,
    training_files,
)
from moe_offload_lab.sim.workload import static_batches
from moe_offload_lab.traces.errors import MoeLabError
from moe_offload_lab.traces.format import DECODE, PREFILL
from moe_offload_lab.traces.importers import import_trace

E, K = 6, 2


def batches(steps=2, micro=3, seq=4, b=2, seed=0):
    """Token values [s, b] per (iteration, micro-batch), all distinct."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(10_000)[: steps * micro * seq * b]
    return [[values[(i * micro + m) * seq * b:(i * micro + m + 1) * seq * b].reshape(seq, b)
             for m in range(micro)] for i in range(steps)]


def expected_sequences(data, spec):
    """``[(token values [s], ids [s, L, k])]`` per sequence, in the order the importer numbers
    them (iteration, micro-batch, sequence in the micro-batch)."""
    out = []
    for micro in data:
        for tokens in micro:
            for j in range(tokens.shape[1]):
                column = tokens[:, j]
                out.append(np.stack([route(column, g, E, K) for g in spec.moe_layer_indices],
                                    axis=1))
    return out


def check_training(trace, data, spec, b):
    sequences = expected_sequences(data, spec)
    assert len(trace.request_ids()) == len(sequences)
    for r, ids in enumerate(sequences):
        rows = trace.request_id == r
        assert np.array_equal(trace.expert_ids[rows], ids)
        assert trace.position[rows].tolist() == list(range(ids.shape[0]))
    assert (trace.phase == PREFILL).all()
    assert trace.provenance["mode"] == "training" and trace.provenance["micro_batch_size"] == b


def test_one_f_one_b_order():
    assert one_f_one_b(3, 1, 0) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    assert one_f_one_b(3, 2, 0)[:3] == [("F", 0), ("F", 1), ("B", 0)]


def test_training_micro_batches_and_recompute_repeats(tiny_spec, tmp_path):
    """Several micro-batches per iteration, each recomputed in the backward pass: the old
    importer stopped at 'a second record for step 1, layer ...'."""
    data = batches()
    [path] = training_files(tmp_path, data, tiny_spec.num_layers, tiny_spec.moe_layer_indices,
                            E, K)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["step"] == 1 and len(lines) == 2 * 3 * 2 * 3  # steps x mbs x (F+R) x layers
    trace = import_trace("megatron", path, tiny_spec, micro_batch_size=2)
    check_training(trace, data, tiny_spec, 2)
    assert trace.provenance["recompute_repeats_dropped"] == 2 * 3 * 3
    assert "micro-batches" in trace.provenance["mode_reason"]


def test_training_without_recompute_and_micro_batch_size_one(tiny_spec, tmp_path):
    data = batches(b=1)
    [path] = training_files(tmp_path, data, tiny_spec.num_layers, tiny_spec.moe_layer_indices,
                            E, K, recompute=False)
    trace = import_trace("megatron", path, tiny_spec)
    check_training(trace, data, tiny_spec, 1)
    assert trace.provenance["recompute_repeats_dropped"] == 0


def test_pipeline_stage_files_are_merged(tiny_spec, tmp_path):
    """Two stages; each numbers its blocks from 0 (stage 0: block 0 dense, block 1; stage 1:
    blocks 2, 3 as layers 0, 1)."""
    data = batches()
    paths = training_files(tmp_path, data, tiny_spec.num_layers, tiny_spec.moe_layer_indices,
                           E, K, pipeline=2)
    assert {json.loads(line)["layer"] for line in paths[1].read_text().splitlines()} == {0, 1}
    trace = import_trace("megatron", paths[::-1], tiny_spec, micro_batch_size=2)  # any order
    check_training(trace, data, tiny_spec, 2)
    assert trace.provenance["pipeline_stages"] == 2 and trace.provenance["layer_ids"] == "local0"


def test_sequence_parallel_rank_files_with_pipeline(tiny_spec, tmp_path):
    """Tensor parallel 2 with sequence parallelism and 2 pipeline stages: 4 rank files, each
    tensor-parallel rank routing half of every micro-batch's tokens."""
    data = batches(seq=4, b=2)
    paths = training_files(tmp_path, data, tiny_spec.num_layers, tiny_spec.moe_layer_indices,
                           E, K, pipeline=2, tensor=2, sequence_parallel=True)
    assert json.loads(paths[0].read_text().splitlines()[0])["num_tokens"] == 4  # 8 / 2
    trace = import_trace("megatron", paths, tiny_spec, micro_batch_size=2, tensor_parallel=2,
                         sequence_parallel=True)
    check_training(trace, data, tiny_spec, 2)
    with pytest.raises(MoeLabError, match="tensor-parallel ranks disagree"):
        import_trace("megatron", paths, tiny_spec, micro_batch_size=2, tensor_parallel=2)


def test_tensor_parallel_ranks_without_sequence_parallelism_agree(tiny_spec, tmp_path):
    data = batches()
    paths = training_files(tmp_path, data, tiny_spec.num_layers, tiny_spec.moe_layer_indices,
                           E, K, tensor=2)
    trace = import_trace("megatron", paths, tiny_spec, micro_batch_size=2, tensor_parallel=2)
    check_training(trace, data, tiny_spec, 2)


def static_wave(prompts=(5, 4, 4), decode=(3, 3, 2), seed=1):
    """Engine steps of one static batch: the prefill (prompts one after another), then decode
    steps of one token per live request (the last request finishes first)."""
    rng = np.random.default_rng(seed)
    prefill = rng.integers(0, 10_000, sum(prompts))
    return [prefill] + [rng.integers(0, 10_000, n) for n in decode]


def check_inference(trace, steps, spec, batch):
    """The steps come back as prefill then decode, and a static batch replays them exactly."""
    schedule = static_batches(trace, batch)
    assert len(schedule) == len(steps)
    for rows, tokens in zip(schedule, steps, strict=True):
        want = np.stack([route(tokens, g, E, K) for g in spec.moe_layer_indices], axis=1)
        assert np.array_equal(trace.expert_ids[rows], want)
    assert (trace.phase[schedule[0]] == PREFILL).all()
    assert all((trace.phase[rows] == DECODE).all() for rows in schedule[1:])


def test_inference_hook_path_keeps_decode_steps(tiny_spec, tmp_path):
    """The old importer made every engine step a one-request prefill."""
    steps = static_wave()
    path = inference_hook_file(tmp_path / "router_trace_rank0.jsonl", steps,
                               tiny_spec.moe_layer_indices, E, K, mtp=True)
    trace = import_trace("megatron", path, tiny_spec)
    check_inference(trace, steps, tiny_spec, 3)
    prov = trace.provenance
    assert prov["mode"] == "inference" and prov["replay_with_static_batch"] == 3
    assert prov["waves"] == [{"first_step": 0, "requests": 3, "decode_steps": 3}]
    assert prov["skipped_non_decoder_records"] == 4  # the MTP head's records
    assert trace.position[trace.request_id == 0].tolist() == list(range(5 + 3))


def test_inference_sink_path_with_one_based_global_layer_numbers(tiny_spec, tmp_path):
    """The routing-replay sink writes ``layer_number`` (blocks 2..4 for blocks 1..3): the old
    importer failed on them."""
    steps = static_wave() + static_wave(prompts=(3, 3), decode=(2,), seed=2)
    path = inference_sink_file(tmp_path / "sink.jsonl", steps, tiny_spec.moe_layer_indices, E, K)
    assert {json.loads(line)["layer"] for line in path.read_text().splitlines()} == {2, 3, 4}
    trace = import_trace("megatron", path, tiny_spec)
    assert trace.provenance["layer_ids"] == "global1"
    assert [w["requests"] for w in trace.provenance["waves"]] == [3, 2]
    first = trace.request_id < 3
    check_inference(trace.select(first), steps[:4], tiny_spec, 3)
    check_inference(trace.select(~first), steps[4:], tiny_spec, 2)
    bare = inference_sink_file(tmp_path / "bare.jsonl", steps, tiny_spec.moe_layer_indices, E, K,
                               layer_numbers=False)
    again = import_trace("megatron", bare, tiny_spec)
    assert again.provenance["layer_ids"] == "moe0"
    assert np.array_equal(again.expert_ids, trace.expert_ids)


@pytest.mark.parametrize("options, match", [
    ({"mode": "inference"}, "step 1 holds 3 records per layer"),
    ({"micro_batch_size": 3}, "not a multiple of the micro-batch size 3"),
    ({"layer_ids": "global1"}, "layer 1 is not a MoE block"),
    ({"mode": "sometimes"}, "mode must be one of"),
    ({"tensor_parallel": 0}, "tensor_parallel must be a positive integer"),
])
def test_training_file_errors(options, match, tiny_spec, tmp_path):
    [path] = training_files(tmp_path, batches(), tiny_spec.num_layers,
                            tiny_spec.moe_layer_indices, E, K)
    with pytest.raises(MoeLabError, match=match) as info:
        import_trace("megatron", path, tiny_spec, **options)
    assert "\n" not in str(info.value)


def test_merge_errors(tiny_spec, tmp_path):
    data = batches()
    paths = training_files(tmp_path, data, tiny_spec.num_layers, tiny_spec.moe_layer_indices,
                           E, K, pipeline=2, recompute=False)
    with pytest.raises(MoeLabError, match="blocks per stage"):
        import_trace("megatron", paths, tiny_spec, stage_layers=[1, 2])
    with pytest.raises(MoeLabError, match="not a whole number of pipeline stages"):
        import_trace("megatron", paths, tiny_spec, tensor_parallel=3)
    lines = paths[1].read_text().splitlines()
    paths[1].write_text("\n".join(lines[:-1]) + "\n")  # the last micro-batch of block 3 lost
    with pytest.raises(MoeLabError, match="has 2 micro-batch record.s. for MoE layer .block. 3"):
        import_trace("megatron", paths, tiny_spec, micro_batch_size=2)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(paths[0].read_text())
    with pytest.raises(MoeLabError, match="two files hold records of the same rank"):
        import_trace("megatron", [paths[0], twice], tiny_spec)
