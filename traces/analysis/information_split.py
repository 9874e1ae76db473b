"""Prophet's information split: how many bits of a layer's routing a predictor can exploit, and
how many of those come from the token's routing history.

Prophet reports, for its models, routing entropy of at most 7.00 bits, about 4.11 bits
exploitable, about 2.59 bits of them from expert history, and about 0.62 bits of mutual
information between consecutive layers. Those figures belong to the paper's models; this module
measures the same split on any trace, per layer and averaged over layers.

Variable: ``X_l``, one top-k slot of a token at MoE layer ``l`` (each of the ``k`` slots weighted
``1/k``, the convention of :mod:`traces.analysis.entropy`). Contexts a predictor can read before
layer ``l`` runs:

- *history*: the token's top-k sets at layers ``l-1 .. l-c`` (Prophet: ``c = 3``);
- *all*: the history plus the previous token's top-k set at layer ``l`` (the temporal context
  any serving system has).

Estimates are **held-out cross-entropies**: requests are split (seeded) into a fitting part and
a scoring part; a smoothed conditional model is fitted on the first and
``CE = -mean log2 q(x | context)`` measured on the second. Each context is a backoff chain from
the longest context to the marginal: ``q_j(x | c) = (n_j(c, x) + a q_{j-1}(x | c')) / (n_j(c) + a)``
(``a``, and which chain - for *all*: from the whole history with the previous token down
through the history or through the previous token alone, from the last layer with the previous
token, the previous token alone, the history alone, or no context - chosen on a validation part
of the fitting requests, so a context that does not generalise is ignored rather than credited
negative bits). A cross-entropy bounds the true
conditional entropy from above (up to sampling noise), so the information it credits to a
context is a *lower bound*, unlike plug-in estimates, which over-credit sparse contexts.

The split, in bits, per layer (``l >= 1``; averaged over layers in :func:`information_split`):

- ``max_bits = log2 E``: the uniform guess;
- ``entropy_bits = H(X_l)``: routing entropy (plug-in, whole trace; ``max - entropy`` is skew);
- ``exploitable_bits = log2 E - CE(X_l | all)``: what a predictor reading the context removes
  from the uniform guess (skew + history + the previous token);
- ``history_bits = CE(X_l) - CE(X_l | history)``: the part the history alone explains beyond
  popularity (Prophet's "from expert history");
- ``residual_bits = CE(X_l | all)``: what no observed context explains;
- ``consecutive_mi_bits``: ``I(T_{l-1}; T_l)`` between top-1 experts (the measure the presets
  are calibrated against Prophet's 0.62 bits with), and ``consecutive_mi_slot_bits``, the
  slot-pair ``I(X_{l-1}; X_l)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from moe_offload_lab.traces.analysis.entropy import entropy_bits
from moe_offload_lab.traces.analysis.information import (
    adjacent_pairs,
    cross_layer_mutual_information,
    set_codes,
    top1_cross_layer_mutual_information,
)
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace

SMOOTHING = (0.1, 0.5, 2.0, 8.0, 32.0)
PUBLISHED = {"entropy_bits_max": 7.00, "exploitable_bits": 4.11, "history_bits": 2.59,
             "consecutive_mi_bits": 0.62}  # Prophet, its own models (not ours)


@dataclass(frozen=True)
class InformationSplit:
    """The split of one trace: per-layer arrays [L] (NaN at layer 0) and their layer means."""

    model: str
    context_layers: int
    max_bits: float
    entropy_bits: np.ndarray
    exploitable_bits: np.ndarray
    history_bits: np.ndarray
    residual_bits: np.ndarray
    consecutive_mi_bits: np.ndarray
    consecutive_mi_slot_bits: np.ndarray
    fit_tokens: int
    score_tokens: int

    def summary(self) -> dict[str, float | int | str]:
        """Layer means (and the largest layer entropy), JSON-ready."""
        def mean(a: np.ndarray) -> float:
            return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan

        return {"model": self.model, "context_layers": self.context_layers,
                "max_bits": self.max_bits,
                "entropy_bits": mean(self.entropy_bits),
                "entropy_bits_max": float(np.nanmax(self.entropy_bits)),
                "exploitable_bits": mean(self.exploitable_bits),
                "history_bits": mean(self.history_bits),
                "residual_bits": mean(self.residual_bits),
                "consecutive_mi_bits": mean(self.consecutive_mi_bits),
                "consecutive_mi_slot_bits": mean(self.consecutive_mi_slot_bits),
                "fit_tokens": self.fit_tokens, "score_tokens": self.score_tokens}


def _joint_codes(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Dense codes of the tuples formed by ``columns`` (equal tuples, equal codes)."""
    if len(columns) == 1:
        return np.asarray(columns[0], dtype=np.int64)
    stacked = np.stack([np.asarray(c, dtype=np.int64) for c in columns], 1)  # [T, n]
    return np.unique(stacked, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


class _Chain:
    """A backoff chain of contexts (longest first) fitted on some tokens of one layer."""

    def __init__(self, contexts: Sequence[np.ndarray], ids: np.ndarray, fit: np.ndarray,
                 num_experts: int) -> None:
        self.num_experts = num_experts
        k = ids.shape[1]
        marginal = np.bincount(ids[fit].ravel(), minlength=num_experts).astype(np.float64)
        self.marginal = (marginal + 0.5) / (marginal.sum() + 0.5 * num_experts)  # [E]
        self.contexts = contexts
        self.tables = []
        for ctx in contexts:
            cells = ctx[fit, None] * num_experts + ids[fit]  # [n, k]
            keys, counts = np.unique(cells.ravel(), return_counts=True)
            ctx_keys, ctx_counts = np.unique(ctx[fit], return_counts=True)
            self.tables.append((keys, counts, ctx_keys, ctx_counts * k))

    @staticmethod
    def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
        if keys.size == 0:
            return np.zeros(query.shape, np.float64)
        pos = np.clip(np.searchsorted(keys, query), 0, keys.size - 1)
        return np.where(keys[pos] == query, counts[pos], 0).astype(np.float64)

    def probability(self, ids: np.ndarray, rows: np.ndarray, a: float) -> np.ndarray:
        """``q(x | context)`` of every slot of ``rows`` -> [n, k]."""
        x = ids[rows]  # [n, k]
        q = self.marginal[x]
        for ctx, (keys, counts, ctx_keys, ctx_counts) in zip(reversed(self.contexts),
                                                            reversed(self.tables),
                                                            strict=True):
            c = ctx[rows]  # [n]
            n_cx = self._lookup(keys, counts, c[:, None] * self.num_experts + x)
            n_c = self._lookup(ctx_keys, ctx_counts, c)[:, None]
            q = (n_cx + a * q) / (n_c + a)
        return q


def _cross_entropy(chain: _Chain, ids: np.ndarray, rows: np.ndarray, a: float) -> float:
    return float(-np.log2(chain.probability(ids, rows, a)).mean())


def _split_rows(trace: Trace, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the fitting, validation and scoring requests (60 / 15 / 25 %)."""
    requests = np.unique(trace.request_id)
    if len(requests) < 3:
        raise ConfigError(f"the information split needs at least 3 requests (it scores held-out "
                          f"requests); the trace has {len(requests)}")
    order = np.random.default_rng([seed, 0x1F0]).permutation(requests)
    n_score = max(1, round(0.25 * len(order)))
    n_val = max(1, round(0.15 * len(order)))
    parts = (order[n_score + n_val:], order[n_score:n_score + n_val], order[:n_score])
    return tuple(np.flatnonzero(np.isin(trace.request_id, p)) for p in parts)  # type: ignore


def information_split(trace: Trace, context_layers: int = 3, seed: int = 0) -> InformationSplit:
    """Measure the split of ``trace`` (see module docstring)."""
    if context_layers < 1:
        raise ConfigError("context_layers must be at least 1")
    spec = trace.spec
    n_layers, n_exp = spec.num_moe_layers, spec.num_experts
    if n_layers < 2:
        raise ConfigError("the information split needs at least two MoE layers")
    fit, val, score = _split_rows(trace, seed)
    ids_all = trace.expert_ids.astype(np.int64)  # [T, L, k]
    sets = [set_codes(trace, layer)[0] for layer in range(n_layers)]  # L x [T]
    earlier, later = adjacent_pairs(trace.request_id)
    none = int(max(int(s.max()) for s in sets) + 1) if trace.num_tokens else 0
    out = {name: np.full(n_layers, np.nan) for name in ("exploitable", "history", "residual")}
    fit_val = np.concatenate([fit, val])
    for layer in range(1, n_layers):
        ids = ids_all[:, layer]  # [T, k]
        depth = min(context_layers, layer)
        history = [_joint_codes([sets[layer - j] for j in range(1, d + 1)])
                   for d in range(depth, 0, -1)]  # longest first
        previous = np.full(trace.num_tokens, none, dtype=np.int64)
        previous[later] = sets[layer][earlier]
        full_prev = _joint_codes([history[0], previous])
        last_prev = _joint_codes([sets[layer - 1], previous])
        with_previous = [  # nested chains; the one best on validation is used
            [full_prev, *history], [full_prev, previous], [last_prev, previous], [previous]]
        estimates = {}
        # every context may also be ignored (the simpler model wins on validation when the
        # richer one does not generalise), so a context is never credited negative bits
        for name, options in (("marginal", [[]]), ("history", [history, []]),
                              ("all", [*with_previous, history, []])):
            best = (math.inf, 0.0, options[0])
            for contexts in options:
                probe = _Chain(contexts, ids, fit, n_exp)
                for a in SMOOTHING:
                    best = min(best, (_cross_entropy(probe, ids, val, a), a, contexts),
                               key=lambda item: item[0])
            chain = _Chain(best[2], ids, fit_val, n_exp)
            estimates[name] = _cross_entropy(chain, ids, score, best[1])
        out["exploitable"][layer] = math.log2(n_exp) - estimates["all"]
        out["history"][layer] = estimates["marginal"] - estimates["history"]
        out["residual"][layer] = estimates["all"]
    entropy = entropy_bits(trace)
    top1 = top1_cross_layer_mutual_information(trace, 1).get(1, np.zeros(0))
    slot = cross_layer_mutual_information(trace, 1).get(1, np.zeros(0))
    return InformationSplit(
        model=spec.name, context_layers=context_layers, max_bits=math.log2(n_exp),
        entropy_bits=entropy, exploitable_bits=out["exploitable"],
        history_bits=out["history"], residual_bits=out["residual"],
        consecutive_mi_bits=np.concatenate([[np.nan], top1]),
        consecutive_mi_slot_bits=np.concatenate([[np.nan], slot]),
        fit_tokens=int(len(fit_val)), score_tokens=int(len(score)))


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of :meth:`InformationSplit.summary` rows, Prophet's figures last."""
    cols = ["model", "max_bits", "entropy_bits", "entropy_bits_max", "exploitable_bits",
            "history_bits", "residual_bits", "consecutive_mi_bits", "consecutive_mi_slot_bits"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float)
                                       else str(row[c]) for c in cols) + " |")
    published = {**{c: "" for c in cols}, "model": "Prophet (its models, published)",
                 **{k: f"{v:.2f}" for k, v in PUBLISHED.items()}}
    lines.append("| " + " | ".join(published[c] for c in cols) + " |")
    return "\n".join(lines) + "\n"
