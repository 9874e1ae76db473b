"""Writes SGLang expert-distribution dumps the way SGLang does, for the importer tests.

Follows sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py``:

- ``_DetailSinglePassGatherer``: per forward pass ``input_ids``, ``positions``,
  ``extend_seq_lens`` (``None`` in decode), ``forward_mode`` (``ForwardMode`` of
  ``python/sglang/srt/model_executor/forward_batch_info.py``: EXTEND 1, DECODE 2, MIXED 3, IDLE 4),
  ``topk_ids_of_layer`` int32 ``[num_layers, tokens, 8]`` reset to -1 and filled by
  ``on_select_experts`` with the **physical** top-k ids of the MoE layers, and
  ``global_physical_count``; ``_DetailAccumulator.dump`` saves ``{"records": [...],
  "last_physical_to_logical_map": ...}`` with each record's ``forward_pass_id``, ``rank`` and
  ``gatherer_key``;
- ``_StatAccumulator.dump``: ``{"rank", "logical_count": [buffer, num_layers, logical],
  "average_utilization_rate_over_window"}``, the physical counts of each pass in a buffer of
  ``buffer_size`` rows, turned into logical counts with ``physical_to_logical_map``
  (``_convert_global_physical_count_to_logical_count``).

``num_layers`` is the model's ``num_hidden_layers`` (every block; dense blocks stay empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

EXTEND, DECODE, MIXED, IDLE = 1, 2, 3, 4
WIDTH = 8  # _DetailSinglePassGatherer._TOP_K_NUM


@dataclass
class Pass:
    """One forward pass: ``segments`` (request name, first position, length) in batch order."""

    mode: int
    segments: list[tuple[str, int, int]]
    extend: bool = True  # whether extend_seq_lens is given (not in DECODE passes)


@dataclass
class Server:
    """A tiny model's routing on an SGLang server with EPLB's redundant experts."""

    num_layers: int  # every block
    moe_blocks: tuple[int, ...]
    num_experts: int
    k: int
    physical_to_logical: np.ndarray  # [num_layers, P]
    records: list[dict] = field(default_factory=list)
    counts: list[np.ndarray] = field(default_factory=list)

    def logical(self, request: str, position: int, block: int) -> np.ndarray:
        """The logical experts a token picks: a fixed function of (request, position, block)."""
        seed = sum(map(ord, request)) * 10_007 + position * 101 + block
        return np.random.default_rng(seed).choice(self.num_experts, self.k, replace=False)

    def physical(self, logical: np.ndarray, block: int, token: int) -> np.ndarray:
        """One replica of each logical expert (alternating between replicas by token)."""
        row = self.physical_to_logical[block]
        out = []
        for e in logical:
            replicas = np.flatnonzero(row == e)
            out.append(replicas[token % len(replicas)])
        return np.array(out)

    def forward(self, p: Pass) -> None:
        positions = [pos for _, first, n in p.segments for pos in range(first, first + n)]
        names = [name for name, _, n in p.segments for _ in range(n)]
        n = len(positions)
        topk = torch.full((self.num_layers, n, WIDTH), -1, dtype=torch.int32)
        for block in self.moe_blocks:
            for t, (name, pos) in enumerate(zip(names, positions, strict=True)):
                topk[block, t, : self.k] = torch.from_numpy(
                    self.physical(self.logical(name, pos, block), block, t).astype(np.int32))
        physical_count = torch.zeros((self.num_layers, self.physical_to_logical.shape[1]),
                                     dtype=torch.int32)
        ids = topk.reshape(self.num_layers, -1)
        physical_count.scatter_add_(1, ids.clamp(min=0).long(), (ids != -1).int())
        self.counts.append(physical_count)
        self.records.append(dict(
            forward_pass_id=len(self.records), rank=0, gatherer_key="primary",
            input_ids=list(range(100, 100 + n)), positions=positions,
            extend_seq_lens=[s[2] for s in p.segments] if p.extend else None,
            forward_mode=p.mode, topk_ids_of_layer=topk, misc_objects=[],
            global_physical_count=physical_count))

    def dump_per_token(self, path: Path) -> Path:
        torch.save({"records": self.records,
                    "last_physical_to_logical_map": torch.from_numpy(self.physical_to_logical)},
                   path)
        return path

    def dump_per_pass(self, path: Path) -> Path:
        records = [{k: r[k] for k in ("forward_pass_id", "rank", "gatherer_key",
                                      "global_physical_count")} for r in self.records]
        torch.save({"records": records,
                    "last_physical_to_logical_map": torch.from_numpy(self.physical_to_logical)},
                   path)
        return path

    def dump_stat(self, path: Path, buffer_size: int, ranks: int = 1) -> Path:
        buffer = torch.zeros((buffer_size, *self.counts[0].shape), dtype=torch.int32)
        for i, count in enumerate(self.counts):
            buffer[i % buffer_size] = count
        table = torch.from_numpy(self.physical_to_logical).long()
        logical = torch.zeros((buffer_size, self.num_layers, self.num_experts), dtype=torch.int32)
        logical.scatter_add_(2, table.unsqueeze(0).expand(buffer_size, -1, -1), buffer)
        torch.save({"rank": 0, "logical_count": logical * ranks,  # all_reduce over the ranks
                    "average_utilization_rate_over_window": None}, path)
        return path
