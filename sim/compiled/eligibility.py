"""Which runs the compiled engine can run exactly: a plan, or the reason it cannot.

:func:`compiled_plan` looks at an :class:`~sim.engine.Engine` whose policy has been reset and
returns a :class:`CompiledPlan` (what the kernel needs to know about the policy) or one short
string saying why the run stays on the Python engine. Eligible, and nothing else:

- the policy is exactly a :class:`~policies.composed.ComposedPolicy` (no subclass) of predictor
  ``none`` or ``gate-lookahead``, planner ``on-demand`` or ``next-layer`` (``min_confidence``
  0, ``cancel_stale`` off), replacement ``lru``, placement ``gpu``, admission ``always``, each
  exactly its class, none with a method replaced on the instance, and the policy's own engine
  calls bound the way :meth:`~policies.composed.ComposedPolicy.reset` binds them (a caller that
  rebinds one makes the run ineligible);
- the runtime profile overlaps copies with compute, with or without computing while copying
  (the ideal/roofline profile, ``fused``, ``roofline``...), and has no batched demand copies, no
  writebacks of evicted experts, no staging buffers; whole copies (no chunking), host DRAM over NVMe
  only without a tiered rule (an LRU of host DRAM, :mod:`sim.host`), CPU-placed experts
  impossible (placement ``gpu``);
- the :class:`~sim.engine.Engine` class itself (a subclass may override what the kernel
  replays), static or continuous batching (:class:`~sim.workload.ContinuousBatcher`), a model of
  at least two MoE layers, ``check`` off, and the engine's default fast paths (``simpy_link``,
  ``declared_fast_paths`` and ``defer_timeouts`` at their defaults), numba importable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moe_offload_lab.policies.admission.rules import AlwaysAdmit
from moe_offload_lab.policies.composed import ComposedPolicy, _admit_all
from moe_offload_lab.policies.placement.rules import AlwaysGPU
from moe_offload_lab.policies.planners.next_layer import NextLayerTopN
from moe_offload_lab.policies.planners.on_demand import OnDemand
from moe_offload_lab.policies.predictors.lookahead import GateLookaheadPredictor
from moe_offload_lab.policies.predictors.none import NoPredictor
from moe_offload_lab.policies.replacement.lru import LRU
from moe_offload_lab.sim.workload import ContinuousBatcher

if TYPE_CHECKING:
    from moe_offload_lab.sim.engine import Engine

ENGINES = ("auto", "python", "compiled")


@dataclass(frozen=True)
class CompiledPlan:
    """What the kernel needs of an eligible run's policy.

    ``gate``: the gate-lookahead predictor feeds the next-layer planner and the trace has the
    lookahead column of distance 1 (else no prefetch is ever planned); ``plan_n``: the planner's
    ``n`` (top-n of the next layer); ``planner_wants``: the planner keeps ``wanted`` keys
    (next-layer), restored on the Python object after the run.
    """

    gate: bool
    plan_n: int
    planner_wants: bool


_COMPONENTS = {"predictor": (NoPredictor, GateLookaheadPredictor),
               "planner": (OnDemand, NextLayerTopN), "replacement": (LRU,),
               "placement": (AlwaysGPU,), "admission": (AlwaysAdmit,)}


def _overridden(obj: Any) -> str | None:
    """The name of a method of ``obj``'s class that the instance replaces, if any."""
    cls = type(obj)
    for name, value in vars(obj).items():
        if callable(value) and callable(getattr(cls, name, None)):
            return name
    return None


def _policy_reason(policy: Any) -> str | None:
    """Why ``policy`` is outside the compiled family (None: inside it)."""
    if type(policy) is not ComposedPolicy:
        return f"policy {getattr(policy, 'name', '?')!r} is not a plain ComposedPolicy"
    for kind, types in _COMPONENTS.items():
        component = getattr(policy, kind)
        if type(component) not in types:
            return f"{kind} {type(component).__name__} is not compiled"
        name = _overridden(component)
        if name is not None:
            return f"{kind} {type(component).__name__} has its {name} replaced"
    bound = {"on_layer": policy.replacement.on_access, "place": policy.placement.place,
             "on_fetch_done": policy.replacement.on_insert,
             "on_evict": policy.replacement.on_remove}
    own = vars(policy)
    for name, value in own.items():
        if not callable(value) or not callable(getattr(ComposedPolicy, name, None)):
            continue
        expected = bound.get(name)
        ok = (value == expected if expected is not None else
              value is _admit_all if name == "admit" else
              getattr(value, "__qualname__", "").startswith("ComposedPolicy._bind_fast_paths")
              if name == "prefetch" else False)
        if not ok:
            return f"the policy's {name} is replaced"
    planner = policy.planner
    if isinstance(planner, NextLayerTopN):
        if planner.params.min_confidence != 0.0:
            return "next-layer with min_confidence > 0"
        if planner.params.cancel_stale:
            return "next-layer with cancel_stale"
    return None


def _runtime_reason(engine: Engine) -> str | None:
    """Why the engine's runtime, link or workload is outside the kernel (None: inside it)."""
    from moe_offload_lab.sim.engine import Engine

    system = engine.system
    checks = (
        (type(engine) is not Engine, f"an Engine subclass ({type(engine).__name__})"),
        (engine.check, "check=True (invariant checks run on the Python engine)"),
        (engine.simpy_link, "the SimPy reference link"),
        (not engine.declared_fast_paths, "declared fast paths off (the reference call order)"),
        (not engine.defer_timeouts, "defer_timeouts off"),
        (engine.chunk_bytes > 0, "chunked copies (link.chunk_mb > 0)"),
        (engine.host is not None and (engine.host.rule is not None or engine.host._loading),
         "a host tier with a tiered rule (Prophet's DRAM promotions)"),
        (not system.overlaps, f"runtime {system.name!r} does not overlap copies with compute"),
        (system.batched_copies, f"runtime {system.name!r} batches demand copies"),
        (system.writeback_evicted, f"runtime {system.name!r} writes evicted experts back"),
        (system.staging_buffers > 0, f"runtime {system.name!r} has staging buffers"),
        (engine.batcher is not None and type(engine.batcher) is not ContinuousBatcher,
         "a batcher other than ContinuousBatcher"),
        (engine.n_layers < 2, "a model of one MoE layer"),
    )
    return next((reason for failed, reason in checks if failed), None)


def compiled_plan(engine: Engine) -> CompiledPlan | str:
    """A :class:`CompiledPlan` for ``engine`` (its policy reset), or why it is ineligible."""
    reason = _runtime_reason(engine) or _policy_reason(engine.policy)
    if reason is not None:
        return reason
    try:
        import numba  # noqa: F401 - only whether it imports
    except ImportError:
        return "numba is not installed"
    policy = engine.policy
    gate = bool(isinstance(policy.predictor, GateLookaheadPredictor)
                and isinstance(policy.planner, NextLayerTopN)
                and 1 in engine.trace.lookahead
                and (policy.lookahead_distances is None or 1 in policy.lookahead_distances))
    wants = isinstance(policy.planner, NextLayerTopN)
    return CompiledPlan(gate=gate, plan_n=int(policy.planner.n) if wants else 0,
                        planner_wants=wants)
