"""Request similarity, as in MoE-Infinity: match a request's expert activation matrix (EAM).

Each request accumulates an activation matrix [L, E] (tokens routed to each expert of each layer).
Finished requests enter a bounded store (oldest replaced first). At every step each active
request is matched by cosine similarity against the store; the best ``top_matches`` stored
matrices, weighted by similarity, give per-token expert frequencies for every layer, blended with
the request's own matrix (its temporal locality) by ``own_weight``. A request without history yet
(its first step) is matched on the layers seen so far, every ``rematch_layers`` layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.base import Predictor, register
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


class _Request:
    """Activation matrix of one active request."""

    __slots__ = ("eam", "tokens", "matched", "matched_at")

    def __init__(self, n_layers: int, n_experts: int) -> None:
        self.eam = np.zeros((n_layers, n_experts), dtype=np.float64)  # [L, E] token counts
        self.tokens = 0
        self.matched: np.ndarray | None = None  # [L, E] per-token frequencies of the matches
        self.matched_at = -1  # tokens when last matched


@register("similarity")
class RequestSimilarityPredictor(Predictor):
    """MoE-Infinity-style request-level activation matching (see module docstring)."""

    decision_cost = DecisionCost("cpu", 5.4e-06, 3e-07)

    learns = True

    @dataclass(frozen=True)
    class Params:
        """Store size, matches averaged, own-history blend, rematch cadence."""

        store_size: int = 256
        top_matches: int = 2
        own_weight: float = 0.3
        rematch_tokens: int = 16
        rematch_layers: int = 4

        def __post_init__(self) -> None:
            require(self.store_size >= 1, "store_size must be at least 1")
            require(self.top_matches >= 1, "top_matches must be at least 1")
            require(0.0 <= self.own_weight <= 1.0, "own_weight must lie in [0, 1]")
            require(self.rematch_tokens >= 1, "rematch_tokens must be at least 1")
            require(self.rematch_layers >= 1, "rematch_layers must be at least 1")

    def reset(self, spec: ModelSpec, horizon: int, trace: Trace | None = None,
              schedule: object = None, seed: int = 0) -> None:
        """Empty the store and the active requests."""
        super().reset(spec, horizon, trace, schedule, seed)
        size, n_layers, n_experts = self.params.store_size, self.num_layers, self.num_experts
        self._unit = np.zeros((size, n_layers * n_experts), dtype=np.float64)  # [S, L*E] unit rows
        self._prefix_sq = np.zeros((size, n_layers), dtype=np.float64)  # [S, L] prefix norms^2
        self._freq = np.zeros((size, n_layers, n_experts), dtype=np.float64)  # [S, L, E]
        self._stored = 0
        self._next_slot = 0
        self._active: dict[int, _Request] = {}
        self._batch: list[tuple[_Request, int]] = []  # (request, tokens in this batch)
        self._ranked: list[list[int]] = [[] for _ in range(n_layers)]
        self._confidence: list[list[float]] = [[] for _ in range(n_layers)]
        self._single: _Request | None = None
        self._batch_tokens = 1
        self._top_k = spec.top_k

    # ---- store ---------------------------------------------------------------------------------
    def _store(self, request: _Request) -> None:
        if request.tokens == 0:
            return
        slot = self._next_slot
        self._next_slot = (slot + 1) % self.params.store_size
        self._stored = min(self._stored + 1, self.params.store_size)
        eam = request.eam
        squares = np.cumsum((eam * eam).sum(axis=1))  # [L]
        norm = np.sqrt(squares[-1]) or 1.0
        self._unit[slot] = eam.ravel() / norm
        self._prefix_sq[slot] = squares / (norm * norm)
        self._freq[slot] = eam / request.tokens

    def _match(self, eam: np.ndarray, upto_layer: int) -> np.ndarray | None:
        """Similarity-weighted per-token frequencies [L, E] of the best stored matches."""
        n = self._stored
        if n == 0:
            return None
        width = (upto_layer + 1) * self.num_experts
        query = eam.ravel()[:width]
        query_norm = np.sqrt(query @ query)
        if query_norm == 0:
            return None
        dots = self._unit[:n, :width] @ query  # [n]
        norms = np.sqrt(self._prefix_sq[:n, upto_layer]) * query_norm
        sims = np.divide(dots, norms, out=np.zeros(n), where=norms > 0)
        m = min(self.params.top_matches, n)
        best = np.argsort(-sims, kind="stable")[:m]
        weights = sims[best]
        if weights.sum() <= 0:
            return None
        return np.tensordot(weights / weights.sum(), self._freq[best], axes=1)  # [L, E]

    # ---- per step ------------------------------------------------------------------------------
    def begin_step(self, ctx: LayerContext) -> None:
        """Retire requests that left the batch, admit new ones, rematch, rank all layers."""
        ids, counts = np.unique(ctx.request_ids, return_counts=True)
        present = set(ids.tolist())
        for rid in [r for r in self._active if r not in present]:
            self._store(self._active.pop(rid))
        self._batch = []
        for rid, count in zip(ids.tolist(), counts.tolist(), strict=True):
            request = self._active.get(rid)
            if request is None:
                request = self._active[rid] = _Request(self.num_layers, self.num_experts)
            stale = request.tokens - request.matched_at >= self.params.rematch_tokens
            if request.tokens and (request.matched_at < 0 or stale):
                request.matched = self._match(request.eam, self.num_layers - 1)
                request.matched_at = request.tokens
            self._batch.append((request, count))
        self._single = self._batch[0][0] if len(self._batch) == 1 else None
        self._batch_tokens = ctx.num_tokens
        self._rank_step()

    def _rank_step(self) -> None:
        own_w = self.params.own_weight
        log_miss = np.zeros((self.num_layers, self.num_experts), dtype=np.float64)  # [L, E]
        any_source = False
        for request, count in self._batch:
            parts = []
            if request.tokens:
                parts.append((own_w, request.eam / request.tokens))
            if request.matched is not None:
                parts.append((1.0 - own_w, request.matched))
            if not parts:
                continue
            total_w = sum(w for w, _ in parts) or 1.0
            p = sum(w * x for w, x in parts) / total_w  # [L, E]
            log_miss += count * np.log1p(-np.minimum(p, 1.0 - 1e-12))
            any_source = True
        if not any_source:
            for layer in range(self.num_layers):
                self._ranked[layer] = []
                self._confidence[layer] = []
            return
        scores = -np.expm1(log_miss)  # [L, E] = 1 - prod (1 - p) ** tokens
        # the batch needs at most k * B experts per layer: rank only that many candidates
        limit = min(self.num_experts, self._top_k * self._batch_tokens)
        if limit < self.num_experts:
            top = np.argpartition(-scores, limit - 1, axis=1)[:, :limit]  # [L, limit] unordered
        else:
            top = np.broadcast_to(np.arange(self.num_experts), scores.shape)  # [L, E]
        picked = np.take_along_axis(scores, top, axis=1)  # [L, limit]
        order = np.lexsort((top, -picked), axis=1)  # falling score, ties to the lower id
        top = np.take_along_axis(top, order, axis=1)
        picked = np.take_along_axis(picked, order, axis=1)
        positive = (picked > 0).sum(axis=1).tolist()  # [L]
        top_rows, picked_rows = top.tolist(), picked.tolist()
        for layer in range(self.num_layers):
            n = positive[layer]
            self._ranked[layer] = top_rows[layer][:n]
            self._confidence[layer] = picked_rows[layer][:n]

    def observe(self, ctx: LayerContext) -> None:
        """Add the layer's routing to each request's matrix; rematch requests without history."""
        layer, routing = ctx.layer, ctx.routing
        if routing is None:
            return
        single = self._single
        if single is not None:
            row = single.eam[layer]
            if ctx.num_tokens == 1:
                for expert in ctx.experts:
                    row[expert] += 1.0
            else:
                row += np.bincount(routing.ravel(), minlength=self.num_experts)
        else:
            ids = ctx.request_ids
            for rid in np.unique(ids).tolist():
                picks = routing[ids == rid].ravel()
                self._active[rid].eam[layer] += np.bincount(picks, minlength=self.num_experts)
        if layer == self.num_layers - 1:
            for request, count in self._batch:
                request.tokens += count
        elif (layer + 1) % self.params.rematch_layers == 0:
            fresh = [r for r, _ in self._batch if r.tokens == 0]
            if fresh:
                for request in fresh:
                    request.matched = self._match(request.eam, layer)
                self._rank_step()

    def predict(self, ctx: LayerContext) -> Prediction:
        """The step's ranking of each target layer."""
        pred = self.prediction
        pred.begin(ctx.step, ctx.layer)
        ranked, confidence = pred.ranked, pred.confidence
        for i, target in enumerate(pred.targets):
            ranked[i] = self._ranked[target]
            confidence[i] = self._confidence[target]
        return pred
