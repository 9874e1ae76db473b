"""Prophet-style history transformer: routing of the last ``c`` layers -> experts of the next
``h`` layers, one sigmoid confidence per expert and distance.

Each of the ``c`` history slots is one token of a small transformer encoder: the sum of the
embeddings of the slot's ``k`` experts plus an embedding of the slot's absolute layer (a padding
layer id for slots before layer 0). The output at the last slot (layer ``l``), plus an embedding
of ``l``, feeds a linear head of ``h * E`` logits.
"""

from __future__ import annotations

import torch
from moe_offload_lab.policies.learned.models.base import LearnedModel, Shape, register_model
from torch import nn


@register_model
class HistoryTransformer(LearnedModel):
    """Transformer over the expert routing of the last ``context`` layers."""

    kind = "history-transformer"
    inputs = "history"
    hyper = {"d_model": 32, "heads": 4, "layers": 2, "ff": 64, "dropout": 0.0}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        d = int(self.hp["d_model"])
        n_layers, n_exp = shape.num_layers, shape.num_experts
        self.expert_emb = nn.Embedding(n_exp + 1, d, padding_idx=n_exp)
        self.slot_layer_emb = nn.Embedding(n_layers + 1, d)  # id L: before layer 0
        self.source_emb = nn.Embedding(n_layers, d)
        block = nn.TransformerEncoderLayer(d, int(self.hp["heads"]), int(self.hp["ff"]),
                                           float(self.hp["dropout"]), batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, int(self.hp["layers"]),
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.out_width())
        offsets = torch.arange(shape.context) - (shape.context - 1)  # [c]: -(c-1) .. 0
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, layer: int, history: torch.Tensor,
                features: torch.Tensor | None) -> torch.Tensor:
        batch = history.shape[0]
        slots = layer + self.offsets  # [c]
        slots = torch.where(slots < 0, torch.full_like(slots, self.shape.num_layers), slots)
        x = self.expert_emb(history).sum(2) + self.slot_layer_emb(slots)  # [B, c, d]
        x = self.encoder(x)  # [B, c, d]
        src = torch.full((batch,), layer, dtype=torch.long, device=history.device)  # [B]
        out = self.norm(x[:, -1]) + self.source_emb(src)  # [B, d]
        return self.head(out).view(batch, self.shape.horizon, self.shape.num_experts)
