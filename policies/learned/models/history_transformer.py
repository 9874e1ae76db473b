"""Prophet's history transformer: the routing of the last ``c`` layers -> the experts of the next
``h`` layers, one sigmoid confidence per expert and distance (Prophet: ``c = 3``, ``h = 3``).

Each of the ``c`` history slots is one token of a small transformer encoder: the sum of the
embeddings of the slot's ``k`` experts plus an embedding of the slot's absolute layer (a padding
layer id for slots before layer 0). The output at the last slot (layer ``l``), plus an embedding
of ``l``, feeds a linear head of ``h * E`` logits.

Sizes (``size``; explicit ``d_model``/``heads``/``layers``/``ff`` override a preset's values):

========  =======  =====  ======  ====  =====================================================
size      d_model  heads  layers  ff    parameters (Mixtral-8x7B / Qwen3-30B-A3B shape)
========  =======  =====  ======  ====  =====================================================
tiny      16       2      1       32    3.8k / 12k
small     32       4      2       64    20k / 37k (the default: about a minute on one core)
base      128      4      3       512   0.61M / 0.67M
paper     512      8      4       1024  8.46M / 8.72M (Prophet reports about 8.4M)
========  =======  =====  ======  ====  =====================================================

The ``paper`` size is our reading of "a 4-layer transformer of about 8.4M parameters": four
pre-norm encoder blocks of width 512 with a 1024-wide feed-forward have 8.4M parameters; the
embeddings and the head add the rest, which depends on the model's shape. Prophet's other
details (tokenisation of the history, training schedule) are not published in the material we
have; the table of ``policies/README.md`` lists what is ours.
"""

from __future__ import annotations

from typing import Any

import torch
from moe_offload_lab.policies.learned.models.base import LearnedModel, Shape, register_model
from moe_offload_lab.traces.errors import ConfigError
from torch import nn

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 16, "heads": 2, "layers": 1, "ff": 32},
    "small": {"d_model": 32, "heads": 4, "layers": 2, "ff": 64},
    "base": {"d_model": 128, "heads": 4, "layers": 3, "ff": 512},
    "paper": {"d_model": 512, "heads": 8, "layers": 4, "ff": 1024},
}


def resolve_size(hp: dict[str, Any]) -> dict[str, Any]:
    """``hp`` with the ``size`` preset's values filled in where ``hp`` leaves them ``None``."""
    size = hp.get("size") or "small"
    if size not in SIZES:
        raise ConfigError(f"history-transformer: size must be one of {', '.join(SIZES)}, "
                          f"got {size!r}")
    out = dict(hp)
    out["size"] = size
    for key, value in SIZES[size].items():
        if out.get(key) is None:
            out[key] = value
    return out


@register_model
class HistoryTransformer(LearnedModel):
    """Transformer over the expert routing of the last ``context`` layers."""

    kind = "history-transformer"
    inputs = "history"
    hyper = {"size": "small", "d_model": None, "heads": None, "layers": None, "ff": None,
             "dropout": 0.0}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        self.hp = resolve_size(self.hp)
        d = int(self.hp["d_model"])
        if d % int(self.hp["heads"]):
            raise ConfigError(f"history-transformer: d_model={d} is not a multiple of "
                              f"heads={self.hp['heads']}")
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
