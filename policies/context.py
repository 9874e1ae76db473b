"""LayerContext: everything a policy may know at one MoE layer of one step.

The engine creates ONE context per run and overwrites it in place at every step and layer
(:meth:`LayerContext.begin_step`, :meth:`LayerContext.set_layer`), so no object is built per call.
Policies read it during the call they receive it in and must not keep references to its arrays
or sequences past that call (the engine may reuse their storage); copy what must be remembered.

Fields (``B`` tokens in the step's batch, ``k`` = top_k):

- ``step``: index of the step (batch) in the engine's schedule; ``layer``: dense MoE layer index;
- ``rows`` [B]: the batch's rows in the replayed trace (``None`` in live mode) - oracle
  components look the future up with them;
- ``request_ids`` [B], ``phase`` [B] (0 prefill, 1 decode), ``num_tokens`` = B;
- ``experts``: the distinct experts routed at this layer, ascending, as plain ints;
  ``tokens_per_expert`` aligned with it; ``keys`` the matching keys ``layer * E + expert``;
- ``routing`` [B, k] int and ``gates`` [B, k] float: per-token top-k ids and gate weights (views
  of the step's [B, L, k] arrays, made when read, when the engine gave them to ``begin_step``);
- ``lookahead``: ``{d: [B, k] int}`` the experts layer ``layer + d``'s router would pick from this
  layer's hidden state (``-1`` where ``layer + d >= L``); empty when the trace has no lookahead
  columns. In the executor the live router fills the same field;
- ``view``: the engine's read-only :class:`~policies.cache.CacheView`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.traces.spec import ModelSpec

_NO_TOKENS = np.zeros(0, dtype=np.int64)  # [0]


class LayerContext:
    """Mutable per-layer context, reused by the engine for every call (see module docstring)."""

    __slots__ = ("spec", "num_layers", "num_experts", "top_k", "view", "step", "layer", "rows",
                 "request_ids", "phase", "num_tokens", "experts", "tokens_per_expert", "keys",
                 "_routing", "_gates", "_step_routing", "_step_gates", "lookahead")

    def __init__(self, spec: ModelSpec, view: CacheView) -> None:
        self.spec = spec
        self.num_layers = spec.num_moe_layers
        self.num_experts = spec.num_experts
        self.top_k = spec.top_k
        self.view = view
        self.step = -1
        self.layer = -1
        self.rows: np.ndarray | None = None
        self.request_ids: np.ndarray = _NO_TOKENS
        self.phase: np.ndarray = _NO_TOKENS
        self.num_tokens = 0
        self.experts: Sequence[int] = ()
        self.tokens_per_expert: Sequence[int] = ()
        self.keys: Sequence[int] = ()
        self._routing: np.ndarray | None = None  # [B, k] given per layer
        self._gates: np.ndarray | None = None
        self._step_routing: np.ndarray | None = None  # [B, L, k] given per step
        self._step_gates: np.ndarray | None = None
        self.lookahead: dict[int, np.ndarray] = {}

    def begin_step(self, step: int, request_ids: np.ndarray, phase: np.ndarray,
                   rows: np.ndarray | None = None, routing: np.ndarray | None = None,
                   gates: np.ndarray | None = None) -> None:
        """Start a step: the batch's token rows, request ids and phases (arrays of length B).

        ``routing`` and ``gates`` [B, L, k], when given, are the whole step's: every layer's
        ``routing``/``gates`` is then a view of them, made only if a policy reads it (engines
        skip building L views per step nobody reads). Otherwise :meth:`set_layer` gives them.
        """
        self.step = step
        self.rows = rows
        self.request_ids = request_ids
        self.phase = phase
        self.num_tokens = len(request_ids)
        self.layer = -1
        self._step_routing, self._step_gates = routing, gates
        self._routing = self._gates = None

    @property
    def routing(self) -> np.ndarray | None:
        """[B, k] int: the per-token top-k experts of ``layer``."""
        step_routing = self._step_routing
        return step_routing[:, self.layer] if step_routing is not None else self._routing

    @routing.setter
    def routing(self, value: np.ndarray | None) -> None:
        self._routing, self._step_routing = value, None

    @property
    def gates(self) -> np.ndarray | None:
        """[B, k] float: the gate weights of :attr:`routing`."""
        step_gates = self._step_gates
        return step_gates[:, self.layer] if step_gates is not None else self._gates

    @gates.setter
    def gates(self, value: np.ndarray | None) -> None:
        self._gates, self._step_gates = value, None

    def set_layer(self, layer: int, experts: Sequence[int], tokens_per_expert: Sequence[int],
                  keys: Sequence[int] | None = None, routing: np.ndarray | None = None,
                  gates: np.ndarray | None = None,
                  lookahead: dict[int, np.ndarray] | None = None) -> None:
        """Move to ``layer``: its distinct experts (ascending plain ints), tokens per expert,
        optionally their precomputed keys, the per-token routing and gates and lookahead columns.

        Engines that precompute per-layer lists (see :mod:`policies.needs`) pass ``keys`` to
        skip building them here; ``lookahead`` replaces the dict's contents only when given.
        numpy arrays are converted to lists of plain ints (policies return plain-int keys).
        """
        if isinstance(experts, np.ndarray):
            experts = experts.tolist()
        if isinstance(tokens_per_expert, np.ndarray):
            tokens_per_expert = tokens_per_expert.tolist()
        if isinstance(keys, np.ndarray):
            keys = keys.tolist()
        self.layer = layer
        self.experts = experts
        self.tokens_per_expert = tokens_per_expert
        if keys is None:
            base = layer * self.num_experts
            keys = [base + e for e in experts]
        self.keys = keys
        if routing is not None or self._step_routing is None:
            self.routing = routing
        if gates is not None or self._step_gates is None:
            self.gates = gates
        if lookahead is not None:
            self.lookahead = lookahead
