"""The cache replacement interface: which resident experts to drop, and partitioning."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection

from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import REPLACEMENTS, NoParams
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

register = REPLACEMENTS.register


class ReplacementRule(ABC):
    """Chooses eviction victims among resident keys; may partition the cache per layer.

    The rule tracks the keys it was told are resident (:meth:`on_insert` / :meth:`on_remove`) and
    learns from accesses (:meth:`on_access`). ``uses_prediction`` rules receive the predictor's
    :class:`~policies.prediction.Prediction` through :meth:`bind_prediction`.
    """

    name = "replacement"
    is_oracle = False
    uses_prediction = False
    Params: type = NoParams
    decision_cost = DecisionCost("cpu", 0.0, 0.0)

    def __init__(self, params: object = None) -> None:
        self.params = params if params is not None else self.Params()

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Forget all state. Subclasses extend it (calling ``super().reset``)."""
        self.num_experts = spec.num_experts
        self.num_layers = spec.num_moe_layers
        self.capacity_slots = capacity_slots

    def partition_slots(self) -> list[int] | None:
        """Per-layer quotas the engine must enforce, or None (one shared pool). After reset."""
        return None

    def bind_prediction(self, prediction: Prediction) -> None:  # noqa: B027 - optional hook
        """Receive the predictor's (reused) prediction object; only for ``uses_prediction``."""

    @abstractmethod
    def on_access(self, ctx: LayerContext) -> None:
        """The batch uses ``ctx.keys`` now (``Policy.on_layer``)."""

    @abstractmethod
    def on_insert(self, key: int) -> None:
        """``key`` became resident (its copy completed)."""

    @abstractmethod
    def on_remove(self, key: int) -> None:
        """``key`` left the cache (tolerates unknown keys)."""

    @abstractmethod
    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Append up to ``need`` evictable keys to ``out``, best victim first.

        Evictable: resident in ``view``, not in flight, not in ``keep`` (the current layer's keys:
        never evict them), not in ``soft`` (keys the planner counts on), not already in ``out``.
        With per-layer partitions only keys of ``layer`` qualify.
        """

    def admit(self, key: int, ctx: LayerContext) -> bool:
        """Rule-specific admission of a demand fetch (Belady's bypass); default: always."""
        return True

    # ---- helpers for subclasses ----------------------------------------------------------------
    def _fallback(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                  soft: Collection[int], out: list[int], tracked: Collection[int]) -> None:
        """Fill ``out`` from resident keys the rule does not track (preloaded by an engine without
        ``on_fetch_done``), ascending. Call only when the view holds more keys than tracked."""
        partitioned = view.partition_slots is not None and layer >= 0
        n_experts = self.num_experts
        for key in sorted(view.resident):
            if len(out) >= need:
                return
            if key in tracked or key in keep or key in soft or key in view.in_flight \
                    or key in out:
                continue
            if partitioned and key // n_experts != layer:
                continue
            out.append(key)
