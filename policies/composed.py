"""ComposedPolicy: a predictor, a planner, a replacement rule, a placement rule and admission."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from moe_offload_lab.policies.admission.rules import AlwaysAdmit
from moe_offload_lab.policies.base import FetchPlan, Policy, Schedule
from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.config import PolicyConfig, component_id
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.cost_table import (
    ChargedCost,
    charged_cost,
    declared_charge,
    load_table,
)
from moe_offload_lab.policies.placement.rules import AlwaysGPU
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import (
    ADMISSIONS,
    PLACEMENTS,
    PLANNERS,
    PREDICTORS,
    REPLACEMENTS,
)
from moe_offload_lab.policies.replacement.base import ReplacementRule
from moe_offload_lab.policies.replacement.tiers import TieredRule
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_SMALL = 16  # up to this many current keys, a list lookup beats building a set
_NOTHING: frozenset[int] = frozenset()


class ComposedPolicy(Policy):
    """The standard policy: each engine call is routed to the component that decides it.

    - ``on_layer`` -> replacement.on_access, predictor.observe, admission.on_access;
    - ``prefetch`` -> predictor.predict (when the planner or the rule uses predictions),
      planner.plan;
    - ``evict`` -> replacement.victims, protecting the current layer's keys (always) and the
      planner's wanted keys (while other victims exist);
    - ``admit`` -> replacement.admit and admission.admit; ``place`` -> placement.place.

    It is an oracle (an upper bound) when its predictor or its rule is.
    """

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.name = config.name
        self.predictor = PREDICTORS.build(config.predictor)
        self.planner = PLANNERS.build(config.planner)
        self.replacement = REPLACEMENTS.build(config.replacement)
        self.placement = PLACEMENTS.build(config.placement)
        self.admission = ADMISSIONS.build(config.admission)
        self.is_oracle = bool(self.predictor.is_oracle or self.replacement.is_oracle)
        self._table_path, self.charged_cost = _cost_choice(config, self.components_by_kind())
        self._cost = self.charged_cost.cost
        self._keep: set[int] = set()
        self._keep_step = self._keep_layer = -1
        self._victims: list[int] = []
        self._ctx: LayerContext | None = None
        self.horizon = config.horizon
        self.runtime = dict(config.runtime or {})  # the paper's runtime features (config doc)

    @property
    def decision_cost(self) -> DecisionCost:
        """What one MoE layer of decisions costs (:attr:`charged_cost` says where it came from).

        After :meth:`reset`: the measured cost table's figures for the run's model shape and
        horizon (:mod:`policies.cost_table`), unless the config declares ``decision_cost`` by
        hand. Before it: the components' declared figures."""
        return self._cost

    def needs_lookahead(self, spec: ModelSpec) -> tuple[int, ...]:
        """Distances 1..horizon (capped at the model's MoE layers) when the predictor reads the
        lookahead columns; none otherwise."""
        if not self.predictor.reads_lookahead:
            return ()
        return tuple(range(1, min(self.config.horizon, spec.num_moe_layers) + 1))

    def needs_trace_extras(self, spec: ModelSpec) -> bool:
        """Lookahead columns when the predictor reads them (:meth:`needs_lookahead`), feature
        columns when it may read them (learned predictors)."""
        return bool(self.needs_lookahead(spec)) or bool(self.predictor.reads_features)

    def components_by_kind(self) -> dict[str, tuple[str, object]]:
        """kind -> (the id configs and cost tables name it by, the component)."""
        return {kind: (component_id(getattr(self.config, kind)), getattr(self, kind))
                for kind in ("predictor", "planner", "replacement", "placement", "admission")}

    def reset(self, spec: ModelSpec, capacity_slots: int, cost_model: CostModel,
              trace: Trace | None = None, schedule: Schedule | None = None) -> None:
        """Reset every component; see :meth:`Policy.reset`."""
        if capacity_slots < spec.top_k:
            raise ConfigError(f"a cache of {capacity_slots} slots is smaller than one layer's "
                              f"top-k ({spec.top_k}) of {spec.name}")
        if trace is not None and (trace.spec.num_moe_layers, trace.spec.num_experts) != \
                (spec.num_moe_layers, spec.num_experts):
            raise ConfigError(f"trace model {trace.spec.name!r} does not match {spec.name!r}")
        self.spec = spec
        self.num_experts = spec.num_experts
        self.horizon = min(self.config.horizon, spec.num_moe_layers)
        self.predictor.reset(spec, self.horizon, trace, schedule, self.config.seed)
        if self._table_path is not False:  # charged from a measured table (after the
            # predictor's reset: a learned predictor trained there declares its measured cost)
            self.charged_cost = charged_cost(self.components_by_kind(), spec, self.horizon,
                                             load_table(self._table_path))
            self._cost = self.charged_cost.cost
        self.replacement.reset(spec, capacity_slots, trace, schedule)
        self.placement.reset(spec, cost_model)
        self.lowbit_fraction = self.placement.lowbit_fraction  # HOBBIT's low-precision copies
        self.planner.reset(spec, capacity_slots, cost_model, self.horizon)
        self.admission.reset(spec, capacity_slots)
        if self.replacement.uses_prediction:
            self.replacement.bind_prediction(self.predictor.prediction)
        self.partition_slots = self.replacement.partition_slots()
        # Prophet's hierarchy: a TieredRule (confidence) also decides the host-DRAM tier
        self.tiered_rule = self.replacement if isinstance(self.replacement, TieredRule) else None
        self.lookahead_distances = self.needs_lookahead(spec)
        self._needs_prediction = bool(self.planner.uses_prediction
                                      or self.replacement.uses_prediction)
        # prefetch is then the empty plan, without a call into a (possibly learning) predictor
        self.quiet_no_prefetch = bool(self.planner.never_plans and not self._needs_prediction
                                      and type(self).prefetch is ComposedPolicy.prefetch)
        self._observe = self.predictor.observe if self.predictor.learns else None
        self._admission_access = self.admission.on_access if self.admission.observes else None
        self._access = self.replacement.on_access
        self._rule_victims = self.replacement.victims
        self._rule_admit = self.replacement.admit
        self._admission_admit = self.admission.admit
        self._predict = self.predictor.predict
        self._plan = self.planner.plan
        self._keep.clear()
        self._keep_step = self._keep_layer = -1
        self._ctx = None
        self._bind_fast_paths()

    def _bind_fast_paths(self) -> None:
        """Route engine calls straight to the deciding component where nothing else is needed.

        Saves one Python call level per engine call; behaviour is identical to the class methods.
        """
        cls = type(self)
        for name in ("on_layer", "place", "admit", "prefetch", "on_fetch_done", "on_evict"):
            self.__dict__.pop(name, None)
        if cls.on_layer is ComposedPolicy.on_layer and self._observe is None \
                and self._admission_access is None:
            self.on_layer = self._access  # type: ignore[method-assign]
        if cls.place is ComposedPolicy.place:
            self.place = self.placement.place  # type: ignore[method-assign]
        if cls.admit is ComposedPolicy.admit:
            rule_default = type(self.replacement).admit is ReplacementRule.admit
            admit_all = isinstance(self.admission, AlwaysAdmit)
            if rule_default and admit_all:
                self.admit = _admit_all  # type: ignore[method-assign]
            elif rule_default:
                self.admit = self._admission_admit  # type: ignore[method-assign]
            elif admit_all:
                self.admit = self._rule_admit  # type: ignore[method-assign]
        # AlwaysGPU (stateless) and no admission rule: the protocol need not ask
        self.gpu_admit_all = bool(type(self.placement) is AlwaysGPU
                                  and self.place == self.placement.place
                                  and self.admit is _admit_all)
        if cls.prefetch is ComposedPolicy.prefetch:
            plan, predict = self._plan, self._predict
            if self._needs_prediction:
                self.prefetch = lambda ctx: plan(ctx, predict(ctx))  # type: ignore[method-assign]
            else:
                self.prefetch = lambda ctx: plan(ctx, None)  # type: ignore[method-assign]
        if cls.on_fetch_done is ComposedPolicy.on_fetch_done:
            self.on_fetch_done = self.replacement.on_insert  # type: ignore[method-assign]
        if cls.on_evict is ComposedPolicy.on_evict:
            self.on_evict = self.replacement.on_remove  # type: ignore[method-assign]

    def begin_step(self, ctx: LayerContext) -> None:
        """Remember the engine's context (for eviction protection); forward to the predictor."""
        self._ctx = ctx
        self.predictor.begin_step(ctx)

    def on_layer(self, ctx: LayerContext) -> None:
        """Accesses to the rule, routing to the predictor and the admission rule."""
        self._ctx = ctx
        self._access(ctx)
        if self._observe is not None:
            self._observe(ctx)
        if self._admission_access is not None:
            self._admission_access(ctx)

    def place(self, ctx: LayerContext, missing: Sequence[int]) -> Mapping[int, str]:
        """The placement rule decides."""
        return self.placement.place(ctx, missing)

    def admit(self, key: int, ctx: LayerContext) -> bool:
        """Both the rule's own admission (Belady's bypass) and the admission component."""
        return self._rule_admit(key, ctx) and self._admission_admit(key, ctx)

    def evict(self, view: CacheView, need: int, layer: int = -1) -> Sequence[int]:
        """Victims from the rule: never the current layer's keys; the planner's wanted keys only
        when nothing else is evictable."""
        out = self._victims
        out.clear()
        if need <= 0:
            return out
        ctx = self._ctx
        keep: Collection[int] = ()
        if ctx is not None:
            keep = ctx.keys
            if len(keep) > _SMALL:  # large batches: a set makes each check O(1)
                if self._keep_step != ctx.step or self._keep_layer != ctx.layer:
                    self._keep.clear()
                    self._keep.update(keep)
                    self._keep_step, self._keep_layer = ctx.step, ctx.layer
                keep = self._keep
        wanted = self.planner.wanted
        self._rule_victims(view, need, layer, keep, wanted, out)
        if len(out) < need and wanted:
            self._rule_victims(view, need - len(out), layer, keep, _NOTHING, out)
        return out

    def prefetch(self, ctx: LayerContext) -> FetchPlan:
        """Predict (when needed) and plan."""
        return self._plan(ctx, self._predict(ctx) if self._needs_prediction else None)

    def on_fetch_done(self, key: int) -> None:
        """The rule tracks the new resident."""
        self.replacement.on_insert(key)

    def on_evict(self, key: int) -> None:
        """The rule forgets the key."""
        self.replacement.on_remove(key)

    # ---- offline evaluation --------------------------------------------------------------------
    def current_prediction(self, ctx: LayerContext) -> Prediction:
        """The predictor's prediction at ``ctx``'s layer, computing it if prefetch did not."""
        prediction = self.predictor.prediction
        if prediction.step == ctx.step and prediction.layer == ctx.layer:
            return prediction
        return self._predict(ctx)


def _cost_choice(config: PolicyConfig, components: dict[str, tuple[str, object]]
                 ) -> tuple[str | None | bool, ChargedCost]:
    """(the table to charge from at reset: a path, None for the default one, False for none;
    the cost until then) of a policy config's ``decision_cost``."""
    declared = declared_charge(components)
    given = config.decision_cost
    if given is None:
        return None, declared
    if "table" in given:
        if set(given) != {"table"} or not isinstance(given["table"], str):
            raise ConfigError(f"policy {config.name!r}: decision_cost: {{table: PATH}} takes "
                              f"nothing else")
        load_table(given["table"])  # a missing file is an error now, not at reset
        return given["table"], declared
    try:
        cost = DecisionCost(**given)
    except TypeError as exc:
        raise ConfigError(f"policy {config.name!r}: decision_cost: {exc}") from None
    return False, ChargedCost(cost, "declared")


def _admit_all(key: int, ctx: LayerContext) -> bool:
    """Admission when neither the rule nor the admission component restricts it."""
    return True
