"""Writes router-trace JSONL files the way Megatron-Core's RouterTracer does (importer tests).

Follows NVIDIA/Megatron-LM ``megatron/core/transformer/moe/router_trace.py`` (``RouterTracer``:
``_record`` for the forward-hook path, ``record_indices`` for the routing-replay sink path,
``advance_step`` and ``_flush_records_to_disk``), ``megatron/training/training.py`` (training
calls ``advance_step(iteration)`` once per iteration, after forward and backward of every
micro-batch) and ``megatron/core/inference/text_generation_controllers/
text_generation_controller.py`` (the sink receives ``[tokens, layers, topk]`` with
``layer_ids = [router.layer_number ...]``, Megatron's 1-based global layer numbers, then
``advance_step()``). Records: ``step``, ``stage`` ``"pre_dispatch"``, ``block``, ``layer``,
``rank``, ``num_tokens``, ``topk``, ``top_indices``; MTP records add ``mtp_idx``.

Routing is a fixed function of (token value, global block): the same tokens always pick the same
experts, which is what lets activation recompute repeat a record exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def route(tokens: np.ndarray, block: int, num_experts: int, k: int) -> np.ndarray:
    """``[n, k]`` distinct experts per token, a fixed function of (token value, block)."""
    return np.stack([np.random.default_rng(int(t) * 1000 + block).choice(num_experts, k,
                                                                         replace=False)
                     for t in tokens]) if len(tokens) else np.empty((0, k), np.int64)


class Tracer:
    """One rank's RouterTracer: buffers records, stamps and flushes them per step."""

    def __init__(self, path: Path, rank: int, training: bool) -> None:
        self.path, self.rank, self.training = path, rank, training
        self.step_id, self.seen, self.records = 0, set(), []
        path.write_text("")

    def hook(self, layer: int, top_indices: np.ndarray, block: str = "decoder",
             mtp_idx: int | None = None) -> None:
        """A router forward fired (``layer``: index in the module name ``decoder.layers.N``)."""
        key = (block, mtp_idx, layer)
        if not self.training:  # inference: a layer firing again starts a new step
            if key in self.seen:
                self.flush()
                self.step_id += 1
                self.seen.clear()
            self.seen.add(key)
        self._append(self.step_id, layer, top_indices, block, mtp_idx)

    def record_indices(self, indices: np.ndarray, layer_ids: list[int] | None) -> None:
        """The sink path: ``indices`` [tokens, layers, topk] for one engine step."""
        for i in range(indices.shape[1]):
            self._append(self.step_id, i if layer_ids is None else layer_ids[i], indices[:, i])

    def advance_step(self, step_id: int | None = None) -> None:
        if step_id is not None:
            for record in self.records:
                record["step"] = step_id
            self.step_id = step_id
        self.flush()
        self.step_id += 1
        self.seen.clear()

    def _append(self, step: int, layer: int, top_indices: np.ndarray, block: str = "decoder",
                mtp_idx: int | None = None) -> None:
        record = {"step": int(step), "stage": "pre_dispatch", "block": block,
                  "layer": int(layer), "rank": self.rank,
                  "num_tokens": int(top_indices.shape[0]), "topk": int(top_indices.shape[1]),
                  "top_indices": np.asarray(top_indices).astype(int).tolist()}
        if mtp_idx is not None:
            record["mtp_idx"] = mtp_idx
        self.records.append(record)

    def flush(self) -> None:
        with self.path.open("a") as handle:
            for record in self.records:
                handle.write(json.dumps(record) + "\n")
        self.records.clear()


def one_f_one_b(micro_batches: int, stages: int, stage: int) -> list[tuple[str, int]]:
    """Megatron's non-interleaved 1F1B order on one pipeline stage: warm-up forwards, then one
    forward and one backward alternately, then the remaining backwards."""
    warmup = min(stages - stage - 1, micro_batches)
    order = [("F", m) for m in range(warmup)]
    forward, backward = warmup, 0
    while forward < micro_batches:
        order += [("F", forward), ("B", backward)]
        forward, backward = forward + 1, backward + 1
    return order + [("B", m) for m in range(backward, micro_batches)]


def training_files(folder: Path, batches: list[list[np.ndarray]], num_layers: int,
                   moe_blocks: tuple[int, ...], num_experts: int, k: int, *,
                   pipeline: int = 1, tensor: int = 1, sequence_parallel: bool = False,
                   recompute: bool = True, first_iteration: int = 1) -> list[Path]:
    """Router traces of a training run, one file per rank (rank = stage * tensor + tp_rank).

    ``batches[step][m]`` is micro-batch ``m`` of iteration ``step``: token values ``[s, b]``
    (sequence length, micro-batch size). Each stage holds ``num_layers / pipeline`` blocks; the
    router of block ``g`` writes its stage-local index ``g - offset``. With sequence parallelism a
    tensor-parallel rank routes its slice of the flattened ``[s * b]`` tokens.
    """
    per_stage = num_layers // pipeline
    tracers = {}
    for stage in range(pipeline):
        for tp in range(tensor):
            rank = stage * tensor + tp
            tracers[rank] = Tracer(folder / f"router_trace_rank{rank}.jsonl", rank, True)
    for step, micro in enumerate(batches):
        for stage in range(pipeline):
            blocks = [g for g in moe_blocks if stage * per_stage <= g < (stage + 1) * per_stage]
            for kind, m in one_f_one_b(len(micro), pipeline, stage):
                if kind == "B" and not recompute:
                    continue
                flat = micro[m].reshape(-1)  # [s * b], Megatron's s-major flattening
                for tp in range(tensor):
                    part = np.array_split(flat, tensor)[tp] if sequence_parallel else flat
                    for g in blocks:
                        tracers[stage * tensor + tp].hook(
                            g - stage * per_stage, route(part, g, num_experts, k))
        for tracer in tracers.values():
            tracer.advance_step(first_iteration + step)
    return [tracers[r].path for r in sorted(tracers)]


def inference_hook_file(path: Path, steps: list[np.ndarray], moe_blocks: tuple[int, ...],
                        num_experts: int, k: int, mtp: bool = False) -> Path:
    """The forward-hook path in inference: per engine step, every MoE router fires once on the
    step's tokens (steps detected by a layer firing again); optionally an MTP head's router."""
    tracer = Tracer(path, 0, training=False)
    for tokens in steps:
        for g in moe_blocks:
            tracer.hook(g, route(tokens, g, num_experts, k))
        if mtp:
            tracer.hook(0, route(tokens, 99, num_experts, k), block="mtp", mtp_idx=0)
    tracer.flush()
    return path


def inference_sink_file(path: Path, steps: list[np.ndarray], moe_blocks: tuple[int, ...],
                        num_experts: int, k: int, layer_numbers: bool = True) -> Path:
    """The routing-replay sink path: per engine step ``record_indices([tokens, L, k])`` with
    Megatron's 1-based layer numbers (or none), then ``advance_step()``."""
    tracer = Tracer(path, 0, training=False)
    layer_ids = [g + 1 for g in moe_blocks] if layer_numbers else None
    for tokens in steps:
        indices = np.stack([route(tokens, g, num_experts, k) for g in moe_blocks], axis=1)
        tracer.record_indices(indices, layer_ids)
        tracer.advance_step()
    return path
