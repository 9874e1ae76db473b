"""Per-layer feature standardisation with an optional PCA projection (fitted on training data).

The trace's ``features`` are already a compression of the hidden state (for the bundled trace,
16 random projections of the 128-wide hidden state). ``pca_dim > 0`` reduces them further per
layer, as PreScope's LLaPor does with its PCA-compressed hidden state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class FeatureEncoder(nn.Module):
    """``x -> ((x - mean[l]) / std[l]) @ proj[l]``, buffers fitted by :meth:`fit`."""

    def __init__(self, num_layers: int, feature_dim: int, pca_dim: int = 0) -> None:
        super().__init__()
        out_dim = pca_dim if 0 < pca_dim < feature_dim else feature_dim
        self.out_dim = out_dim
        self.register_buffer("mean", torch.zeros(num_layers, feature_dim))  # [L, F]
        self.register_buffer("std", torch.ones(num_layers, feature_dim))  # [L, F]
        eye = torch.eye(feature_dim)[:, :out_dim]
        self.register_buffer("proj", eye.repeat(num_layers, 1, 1))  # [L, F, P]

    def fit(self, features: np.ndarray, layer: np.ndarray) -> None:
        """Fit mean, std and (when reducing) the PCA axes per layer."""
        for l_idx in range(self.mean.shape[0]):
            x = features[layer == l_idx].astype(np.float64)  # [n, F]
            if len(x) < 2:
                continue
            mean, std = x.mean(0), x.std(0) + 1e-6
            self.mean[l_idx] = torch.as_tensor(mean, dtype=torch.float32)
            self.std[l_idx] = torch.as_tensor(std, dtype=torch.float32)
            if self.out_dim < x.shape[1]:
                z = (x - mean) / std
                _, _, vt = np.linalg.svd(z, full_matrices=False)  # vt [F, F]
                self.proj[l_idx] = torch.as_tensor(vt[:self.out_dim].T, dtype=torch.float32)

    def forward(self, features: torch.Tensor, layer: int) -> torch.Tensor:
        """Encode ``features`` [B, F] of source layer ``layer`` -> [B, P]."""
        return ((features - self.mean[layer]) / self.std[layer]) @ self.proj[layer]
