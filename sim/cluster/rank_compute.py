"""Per-rank expert compute: each expert instance with tokens costs ``gpu_expert_s(tokens)``."""

from __future__ import annotations

import numpy as np
from moe_offload_lab.sim.compute import ComputeModel


class ExpertTimes:
    """``ComputeModel.gpu_expert_s`` tabulated by token count (grown on demand), so a layer's
    per-rank times are one numpy gather: ``times[inst].sum(axis=1)``."""

    def __init__(self, compute: ComputeModel) -> None:
        self.compute = compute
        self.table = np.zeros(1)  # [max tokens + 1]; 0 tokens cost nothing

    def _grow(self, upto: int) -> None:
        old = len(self.table)
        size = max(upto + 1, 2 * old)
        extra = np.array([self.compute.gpu_expert_s(t) for t in range(old, size)])
        self.table = np.concatenate([self.table, extra])

    def of(self, tokens: np.ndarray) -> np.ndarray:
        """Seconds of one expert instance for each token count in ``tokens`` (any shape)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        top = int(tokens.max()) if tokens.size else 0
        if top >= len(self.table):
            self._grow(top)
        return self.table[tokens]

    def per_rank_s(self, inst: np.ndarray) -> np.ndarray:
        """Seconds of expert compute per rank for ``inst`` [ranks, E] tokens: ``[ranks]``."""
        top = int(inst.max()) if inst.size else 0
        if top >= len(self.table):
            self._grow(top)
        return self.table[inst].sum(axis=1)
