"""The training loop: masked BCE with pos_weight, Adam, early stopping on validation loss.

Batches are grouped by source layer (the networks take one layer per call, as in the policy).
Class imbalance: each (distance, expert) output gets ``pos_weight = neg / pos`` from the training
labels (``pos_weight: full``), its square root (``sqrt``, the default: recall improves without
wrecking calibration as much) or 1 (``none``); clipped to [1, 100].
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moe_offload_lab.policies.learned.data import Examples
from moe_offload_lab.policies.learned.models.base import LearnedModel
from moe_offload_lab.traces.errors import ConfigError
from torch import nn

_POS_WEIGHT = ("sqrt", "full", "none")


@dataclass(frozen=True)
class TrainParams:
    """Optimiser and stopping settings. ``max_steps`` (0 = no limit) caps the optimiser steps."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 4
    max_steps: int = 0
    pos_weight: str = "sqrt"
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.pos_weight not in _POS_WEIGHT:
            raise ConfigError(f"train.pos_weight must be one of {', '.join(_POS_WEIGHT)}, got "
                              f"{self.pos_weight!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("train.epochs, train.batch_size and train.lr must be positive")


def seed_all(seed: int) -> None:
    """Seed torch (weight initialisation, dropout); call before building a model."""
    torch.manual_seed(seed)


def pos_weight(examples: Examples, mode: str) -> torch.Tensor:
    """[h, E] positive-class weights from the label frequencies of ``examples``."""
    valid = examples.mask[:, :, None]  # [N, h, 1]
    pos = (examples.targets & valid).sum(0).astype(np.float64)  # [h, E]
    total = valid.sum(0).astype(np.float64)  # [h, 1]
    ratio = (total - pos) / np.maximum(pos, 1.0)
    if mode == "sqrt":
        ratio = np.sqrt(ratio)
    elif mode == "none":
        ratio = np.ones_like(ratio)
    return torch.as_tensor(np.clip(ratio, 1.0, 100.0), dtype=torch.float32)


class _Tensors:
    """Examples as tensors, indexable per layer."""

    def __init__(self, ex: Examples) -> None:
        self.history = torch.as_tensor(ex.history)
        self.features = None if ex.features is None else torch.as_tensor(ex.features)
        self.targets = torch.as_tensor(ex.targets, dtype=torch.float32)
        self.mask = torch.as_tensor(ex.mask, dtype=torch.float32)
        self.by_layer = {int(l_idx): np.flatnonzero(ex.layer == l_idx)
                         for l_idx in np.unique(ex.layer)}

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        t = torch.as_tensor(idx)
        feats = None if self.features is None else self.features[t]
        return self.history[t], feats, self.targets[t], self.mask[t]


def _loss(model: LearnedModel, layer: int, batch: tuple, weight: torch.Tensor) -> torch.Tensor:
    history, feats, targets, mask = batch
    logits = model(layer, history, feats)  # [B, h, E]
    raw = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight,
                                                         reduction="none")
    return (raw * mask[:, :, None]).sum() / (mask.sum() * targets.shape[2]).clamp(min=1.0)


def evaluate_loss(model: LearnedModel, data: _Tensors, weight: torch.Tensor,
                  batch_size: int = 4096) -> float:
    """Mean masked loss over ``data`` (eval mode, no grad)."""
    model.eval()
    total, count = 0.0, 0.0
    with torch.inference_mode():
        for layer, idx in data.by_layer.items():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                batch = data.batch(chunk)
                n = float(batch[3].sum())
                if n == 0:
                    continue
                total += float(_loss(model, layer, batch, weight)) * n
                count += n
    return total / count if count else math.nan


def train_model(model: LearnedModel, train: Examples, val: Examples | None,
                params: TrainParams, progress: bool = True) -> dict[str, Any]:
    """Fit ``model`` (data-dependent init first), keep the weights of the best validation epoch.

    Returns the training history: losses per epoch, best epoch, steps, seconds.
    """
    from tqdm import tqdm

    threads = torch.get_num_threads()
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    try:
        torch.manual_seed(params.seed)
        rng = np.random.default_rng(params.seed)
        model.fit_data(train.layer, train.history, train.features, train.targets, train.mask)
        weight = pos_weight(train, params.pos_weight)
        data = _Tensors(train)
        val_data = _Tensors(val) if val is not None and len(val) else None
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
        best, best_state, best_epoch, bad = math.inf, None, -1, 0
        history: dict[str, Any] = {"train_loss": [], "val_loss": []}
        steps, started = 0, time.perf_counter()
        bar = tqdm(range(params.epochs), desc=f"train {model.kind}", unit="epoch",
                   disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            batches = [(layer, idx[start:start + params.batch_size])
                       for layer, idx in ((lay, rng.permutation(i))
                                          for lay, i in data.by_layer.items())
                       for start in range(0, len(idx), params.batch_size)]
            order = rng.permutation(len(batches))
            total, n_batches = 0.0, 0
            for b in order:
                layer, idx = batches[b]
                loss = _loss(model, layer, data.batch(idx), weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                n_batches += 1
                steps += 1
                if params.max_steps and steps >= params.max_steps:
                    break
            history["train_loss"].append(total / max(n_batches, 1))
            val_loss = (evaluate_loss(model, val_data, weight) if val_data is not None
                        else history["train_loss"][-1])
            history["val_loss"].append(val_loss)
            bar.set_postfix(train=f"{history['train_loss'][-1]:.4f}", val=f"{val_loss:.4f}")
            if val_loss < best - 1e-5:
                best, best_epoch, bad = val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
            if (params.patience and bad >= params.patience) or \
                    (params.max_steps and steps >= params.max_steps):
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        history.update(best_epoch=best_epoch, best_val_loss=best, steps=steps,
                       epochs_run=len(history["train_loss"]),
                       seconds=time.perf_counter() - started)
        return history
    finally:
        torch.set_num_threads(threads)
