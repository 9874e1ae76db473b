"""Helpers of the recorder tests: prompts and an independent router capture.

The reference capture here deliberately does not use ``traces.record``: it finds router modules by
their class name and hooks them itself, so the recorder's adapters are checked, not reused.
"""

from __future__ import annotations

import numpy as np
import torch

# Different lengths so that left padding is exercised in every batch.
PROMPTS = ["Hello, world!", "a", "The quick brown fox jumps over the lazy dog.", "MoE 123",
           "routing"]


def router_modules(model) -> list[torch.nn.Module]:
    """Router modules in forward order, found by class name (independent of the adapters)."""
    return [m for _, m in model.named_modules()
            if type(m).__name__.lower().endswith(("topkrouter", "topk_router", "moetopkrouter"))]


class ReferenceCapture:
    """Hooks every router; per call keeps (input [n, H], weights [n, k], indices [n, k])."""

    def __init__(self, model) -> None:
        self.routers = router_modules(model)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __enter__(self):
        def hook(module, args, output):
            hidden = args[0]
            self.calls.append((hidden.reshape(-1, hidden.shape[-1]).detach(),
                               output[1].detach(), output[2].detach()))

        self.handles = [r.register_forward_hook(hook) for r in self.routers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def reference_routing(model, tokens: list[int]):
    """Unbatched, uncached forward of one request's tokens.

    Returns (inputs [L] of [n, H], ids [n, L, k], weights [n, L, k], logits list or None).
    """
    with ReferenceCapture(model) as cap, torch.no_grad():
        out = model(torch.tensor([tokens]), output_router_logits=True)
    assert len(cap.calls) == len(cap.routers)
    inputs = [c[0] for c in cap.calls]
    ids = np.stack([c[2].numpy() for c in cap.calls], axis=1)
    weights = np.stack([c[1].float().numpy() for c in cap.calls], axis=1)
    logits = None if out.router_logits is None else [t.float() for t in out.router_logits]
    return inputs, ids, weights, logits, cap.routers


def sort_slots(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each token's top-k slots by expert id (so two recorders' slot orders compare)."""
    order = np.argsort(ids, axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(weights, order, -1)
