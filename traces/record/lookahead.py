"""Lookahead columns and hidden-state features, computed from captured router inputs.

Lookahead at distance ``d`` for MoE layer ``l``: the experts that layer ``l + d``'s router module
picks when it is applied to the hidden state entering layer ``l``'s MoE block. The router module
itself is called, so every architecture's selection rule (DeepSeek's bias and group limit,
Phi-3.5-MoE's sparsemixer, GPT-OSS's router bias) applies; the model is in eval mode, where all of
them are deterministic. Layers ``l >= L - d`` have no target and hold ``-1``.

Features: a fixed random projection of the same hidden state to ``F`` numbers, one matrix
``[H, F]`` shared by all layers, with entries drawn i.i.d. from N(0, 1/H) by a CPU
``torch.Generator`` seeded with ``feature_seed``. For a RMS-normalised input the projected values
are of order 1; they are stored as float16 (clipped to +-60000).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from moe_offload_lab.traces.format import NO_EXPERT
from moe_offload_lab.traces.record.adapters import read_output


def lookahead_rows(routers: list[Any], inputs: list[Any], rows: Any, distances: int,
                   top_k: int) -> dict[int, np.ndarray]:
    """``{d: [n, L, k] int16}`` for ``d = 1 .. distances`` over the selected token ``rows``.

    ``inputs[l]`` is layer ``l``'s router input [batch * seq, H]; ``rows`` a boolean mask or index
    tensor picking the ``n`` recorded tokens. The caller pauses the capture hooks.
    """
    import torch

    n_layers = len(routers)
    selected = [x[rows] for x in inputs]  # L x [n, H]
    n = selected[0].shape[0]
    out = {}
    with torch.inference_mode():
        for d in range(1, distances + 1):
            ahead = np.full((n, n_layers, top_k), NO_EXPERT, dtype=np.int16)  # [n, L, k]
            for layer in range(n_layers - d):
                _, indices = read_output(routers[layer + d](selected[layer]))
                ahead[:, layer] = indices.to("cpu", torch.int16).numpy()
            out[d] = ahead
    return out


class FeatureProjection:
    """Seeded random projection of router inputs to ``width`` features (see module docstring)."""

    def __init__(self, hidden_size: int, width: int, seed: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        # [H, F]
        self.matrix = torch.randn(hidden_size, width, generator=generator) / hidden_size ** 0.5
        self.width, self.seed = width, seed

    def __call__(self, inputs: list[Any], rows: Any) -> np.ndarray:
        """``[n, L, F] float16`` features of the selected rows of every layer's input."""
        import torch

        with torch.inference_mode():
            per_layer = []
            for x in inputs:
                x = x[rows].float()
                per_layer.append(x @ self.matrix.to(x.device))  # [n, F]
            feats = torch.stack(per_layer, dim=1).clamp(-60000.0, 60000.0)  # [n, L, F]
            return feats.to("cpu", torch.float16).numpy()

    def describe(self) -> dict[str, Any]:
        """Provenance entry for the features."""
        return {"method": "random projection of the MoE block input (router input)",
                "distribution": "N(0, 1/hidden_size), one [hidden_size, F] matrix for all layers",
                "generator": "torch.Generator (CPU) manual_seed", "seed": self.seed,
                "width": self.width, "dtype": "float16"}
