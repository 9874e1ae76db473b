"""Batch-aware deduplication (Prophet): one batch-level demand from per-token predictions.

A per-token predictor scores, for each token ``b`` of the batch, the probability ``p[b, d, e]``
that it routes to expert ``e`` at distance ``d``. The engine fetches an expert once per batch,
however many tokens need it, so a prefetch plan must rank experts by the probability that the
BATCH needs them, not by token-level scores (which would list a popular expert ``B`` times).
:func:`deduplicate` is that step, explicit so it can be tested and counted:

- the union of the tokens' predicted experts, one entry per (distance, expert);
- its confidence aggregated over the tokens: ``noisy-or`` ``1 - prod_b (1 - p[b])`` (the batch
  needs ``e`` unless no token does, tokens taken as independent) or ``max`` (the most confident
  token: a lower bound of the noisy-or);
- the expected number of tokens routed to it, ``sum_b p[b]`` (what a planner's CPU-versus-GPU
  cost needs: CPU expert time grows with tokens);
- how many token-level candidates (scores at least ``min_score``) the union merged into how many
  experts, so a report can show what deduplication saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UNIONS = ("noisy-or", "max")


@dataclass
class BatchDemand:
    """The deduplicated demand of one batch at one source layer (see module docstring)."""

    scores: np.ndarray  # [d, E] probability that the batch needs the expert
    tokens: np.ndarray  # [d, E] expected tokens routed to it
    token_candidates: int  # (token, distance, expert) scores >= min_score before the union
    unique_candidates: int  # (distance, expert) scores >= min_score after it

    @property
    def saved(self) -> int:
        """Token-level candidates the union merged away."""
        return self.token_candidates - self.unique_candidates


def union_scores(probs: np.ndarray, union: str = "noisy-or") -> np.ndarray:
    """Batch confidence [d, E] from per-token probabilities ``probs`` [B, d, E]."""
    if union not in UNIONS:
        raise ValueError(f"union must be one of {', '.join(UNIONS)}, got {union!r}")
    if probs.shape[0] == 1:
        return probs[0].astype(np.float64)
    if union == "max":
        return probs.max(0).astype(np.float64)
    p = np.clip(probs.astype(np.float64), 0.0, 1.0 - 1e-12)
    return -np.expm1(np.log1p(-p).sum(0))


def deduplicate(probs: np.ndarray, union: str = "noisy-or",
                min_score: float = 0.0) -> BatchDemand:
    """The batch's demand from per-token probabilities ``probs`` [B, d, E]."""
    scores = union_scores(probs, union)  # [d, E]
    tokens = probs.sum(0, dtype=np.float64)  # [d, E]
    return BatchDemand(scores=scores, tokens=tokens,
                       token_candidates=int((probs >= min_score).sum()),
                       unique_candidates=int((scores >= min_score).sum()))


def tokens_from_union(score: float, batch: int) -> float:
    """Expected tokens routed to an expert whose batch-level noisy-or confidence is ``score``
    over ``batch`` i.i.d. tokens: each token's probability is ``q = 1 - (1 - score)^(1/B)``,
    and ``B q`` tokens are expected. For planners that see only the batch-level score."""
    if batch <= 1:
        return float(score)
    score = min(max(score, 0.0), 1.0 - 1e-12)
    return batch * -math.expm1(math.log1p(-score) / batch)
