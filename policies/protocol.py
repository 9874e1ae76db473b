"""The per-layer protocol of :mod:`policies.base`, written once for every engine.

Every engine (the SimPy simulator, the torch executor, the offline replay of
:mod:`policies.evaluation`, the delayed-copy replay of the tests) drives one
:class:`LayerProtocol` per run: ``begin_step`` once per step, :meth:`LayerProtocol.layer` once per
MoE layer (after it has filled the run's :class:`~policies.context.LayerContext`), ``end_step``
after the step's last layer, and :meth:`LayerProtocol.copy_done` whenever a slot copy lands. The
protocol calls the policy in the contract's order, checks every answer (a broken contract raises
:class:`PolicyViolation` the same way in every engine), keeps the cache's books and tells the
engine which copies to start or abandon. It knows nothing of time:

- *how time passes* is the engine's :class:`Transfers`: a copy's handle, what starting, waiting
  for or cancelling it costs, when it lands (the engine calls :meth:`LayerProtocol.copy_done`
  then; an instant copy returns ``None`` from :meth:`Transfers.start_copy` instead);
- *where memory lives* is the engine's slot store: an object with ``start_fetch(key)``,
  ``complete_fetch(key)`` and ``remove(key)`` (a :class:`~policies.cache.SlotCache`, or the
  executor's slot pool that also maps keys to device buffers), whose
  :class:`~policies.cache.SlotCache` is the view policies read.

After :meth:`LayerProtocol.layer` the engine runs the layer with what the protocol returns: each
needed key's access outcome (:data:`HIT`, :data:`PREFETCH_HIT`, :data:`INFLIGHT`, :data:`MISS`,
in ``ctx.keys`` order, as the engine's codes), the copy handles the layer must wait for, and the
keys placed on the CPU. Counters of what happened (``n_*``) serve the engines' statistics.

Engines specialise their *timing* freely (compiled hot paths, batched link events); a fast path
that skips a call into the policy must be proved equivalent to :meth:`LayerProtocol.layer`, which
stays the one statement of the call order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from moe_offload_lab.policies.base import PlacementError, Policy, split_placement
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.policies.context import LayerContext

# access outcomes of a needed key (the engine may map them to its own codes)
HIT = "hit"  # resident when its layer started
PREFETCH_HIT = "prefetch_hit"  # resident thanks to a prefetch not accessed before
INFLIGHT = "inflight"  # a copy was already running: the layer waits for it
MISS = "miss"  # neither resident nor in flight: placed, then fetched, streamed or run on the CPU
OUTCOMES = (HIT, PREFETCH_HIT, INFLIGHT, MISS)

# copy purposes
DEMAND = "demand"  # a missing key the layer needs, into a cache slot
STREAM = "stream"  # a missing key through a scratch buffer (not admitted, or no slot left)
PREFETCH = "prefetch"  # a speculative copy into a cache slot


class PolicyViolation(AssertionError):
    """A policy returned a decision the contract forbids (a bug in the policy)."""


class SlotStore(Protocol):
    """Where an engine keeps expert slots: the protocol books every slot through it."""

    def start_fetch(self, key: int) -> Any:
        """Book a slot for ``key`` (now in flight)."""

    def complete_fetch(self, key: int) -> None:
        """``key``'s copy landed: it is resident."""

    def remove(self, key: int) -> None:
        """Free ``key``'s slot (evicted, or cancelled in flight)."""


class Transfers(ABC):
    """How an engine moves experts: the hooks :meth:`LayerProtocol.layer` calls."""

    @abstractmethod
    def start_copy(self, key: int, purpose: str, layer: int) -> Any | None:
        """Start a host-to-device copy of ``key`` for ``purpose`` at MoE layer ``layer``.

        ``DEMAND`` and ``PREFETCH`` copies go into the slot the protocol has just booked;
        ``STREAM`` copies into a scratch buffer for the current layer only. Returns the engine's
        handle, or ``None`` when the copy completed at once (instant copies: the protocol then
        marks a slot copy resident and calls ``on_fetch_done`` itself). Demand and stream copies
        of a layer are started before its prefetches, in the order the layer needs them.
        A key in :attr:`LayerProtocol.lowbit` at this call is a low-precision copy (HOBBIT):
        ``policy.lowbit_fraction`` of the expert's bytes.
        """

    def cancel_copy(self, handle: Any) -> None:  # noqa: B027 - optional hook
        """Abandon the in-flight prefetch ``handle`` (its slot is freed by the protocol)."""

    def awaited(self, handle: Any) -> None:  # noqa: B027 - optional hook
        """The current layer needs the in-flight copy ``handle`` (an engine may raise its
        priority)."""

    def prefetch_used(self, handle: Any) -> None:  # noqa: B027 - optional hook
        """The prefetch ``handle`` (landed or still in flight) got its first access."""

    def before_cancel(self) -> None:  # noqa: B027 - optional hook
        """Called once before the layer's cancellations (an engine brings its copies up to the
        decision's time)."""


_LANDED = object()  # the handle of an instant copy in ``unused``
_NONE: frozenset[int] = frozenset()


class LayerProtocol:
    """The contract's per-layer call order for one run (see the module docstring).

    ``cache`` is the run's :class:`SlotCache` (the view policies read), ``memory`` the engine's
    slot store (default: the cache itself), ``transfers`` the engine's copy hooks, ``codes`` maps
    the outcome names to the values the engine wants in the outcome list (default: the names).
    Build it after ``policy.reset`` (it binds the policy's per-layer methods once).

    ``fast_paths``: skip the calls a policy declares it does not need: ``prefetch`` on quiet
    layers (every key resident, no slot copy in flight) with
    :attr:`~policies.base.Policy.quiet_no_prefetch`, ``place`` and ``admit`` with
    :attr:`~policies.base.Policy.gpu_admit_all`; the declarations make the skips exact. False
    makes every call (the reference order).
    """

    __slots__ = ("policy", "cache", "memory", "transfers", "n_layers", "n_experts", "_hit",
                 "_prefetch_hit", "_inflight", "_miss", "_resident", "_on_layer", "_prefetch_of",
                 "copies", "prefetching", "unused", "n_miss", "n_inflight", "n_demand",
                 "n_stream", "n_prefetch", "n_prefetch_used", "n_cancelled", "n_evicted", "n_cpu",
                 "lowbit", "n_lowbit", "_quiet", "_gpu_admit_all")

    def __init__(self, policy: Policy, cache: SlotCache, transfers: Transfers,
                 memory: SlotStore | None = None,
                 codes: Mapping[str, Any] | None = None, fast_paths: bool = True) -> None:
        self.policy = policy
        self._quiet = fast_paths and declared(policy, "quiet_no_prefetch")
        self._gpu_admit_all = fast_paths and declared(policy, "gpu_admit_all")
        self.cache = cache
        self.memory = memory if memory is not None else cache
        self.transfers = transfers
        self.n_layers, self.n_experts = cache.num_layers, cache.num_experts
        codes = dict(codes or {})
        self._hit, self._prefetch_hit, self._inflight, self._miss = (
            codes.get(name, name) for name in OUTCOMES)
        self._resident = cache.resident  # a live set, never replaced
        self._on_layer, self._prefetch_of = policy.on_layer, policy.prefetch  # bound once
        self.copies: dict[int, Any] = {}  # key -> handle of its in-flight slot copy
        self.prefetching: set[int] = set()  # keys whose in-flight slot copy is a prefetch
        self.unused: dict[int, Any] = {}  # prefetched keys not accessed yet -> handle
        # counters (accesses are the engine's: the sum of len(ctx.keys))
        self.n_miss = self.n_inflight = self.n_demand = self.n_stream = self.n_prefetch = 0
        self.n_prefetch_used = self.n_cancelled = self.n_evicted = self.n_cpu = 0
        # HOBBIT (placement "gpu-lowbits", policies.base): keys whose slot copy is low precision,
        # plus, during one layer, its streamed low-precision keys; engines read it in
        # ``start_copy`` to size the copy. ``n_lowbit``: expert computations from such copies.
        self.lowbit: set[int] = set()
        self.n_lowbit = 0

    # ---- steps ----------------------------------------------------------------------------------
    def begin_step(self, ctx: LayerContext) -> None:
        """``policy.begin_step`` (the engine has called ``ctx.begin_step``)."""
        self.policy.begin_step(ctx)

    def end_step(self, ctx: LayerContext) -> None:
        """``policy.end_step``."""
        self.policy.end_step(ctx)

    # ---- copies ---------------------------------------------------------------------------------
    def copy_done(self, key: int) -> None:
        """A slot copy of ``key`` landed (the engine calls this at its completion time)."""
        del self.copies[key]
        if key in self.prefetching:
            self.prefetching.remove(key)
        self.memory.complete_fetch(key)
        self.policy.on_fetch_done(key)

    def _landed(self, key: int) -> None:
        """An instant slot copy of ``key`` completed at once."""
        self.memory.complete_fetch(key)
        self.policy.on_fetch_done(key)

    def _evict(self, need: int, layer: int, protected: Sequence[int]) -> None:
        """Free the slots of the policy's checked victims (:func:`choose_victims`)."""
        policy, memory, unused = self.policy, self.memory, self.unused
        victims = choose_victims(policy, self.cache, need, layer, protected, self.n_experts)
        lowbit = self.lowbit
        for key in victims:
            memory.remove(key)
            unused.pop(key, None)
            if lowbit:
                lowbit.discard(key)
            policy.on_evict(key)
        self.n_evicted += len(victims)

    # ---- one MoE layer --------------------------------------------------------------------------
    def layer(self, ctx: LayerContext) -> tuple[list[Any], list[Any], frozenset[int] | set[int]]:
        """Steps 1 to 5 of the contract at ``ctx.layer`` (``ctx`` filled by the engine).

        Returns ``(outcome, wait, on_cpu)``: the access outcome of each of ``ctx.keys``, the
        handles of the copies the layer needs (in flight before, demand and stream copies started
        now), the keys to compute on the host.
        """
        transfers, copies, unused, resident = self.transfers, self.copies, self.unused, \
            self._resident
        keys = ctx.keys
        self._on_layer(ctx)  # 1. the routing is known: an access
        hit = self._hit
        outcome: list[Any] = []
        wait: list[Any] = []
        missing: list[int] | None = None
        for key in keys:
            if key in resident:
                if unused and key in unused:
                    handle = unused.pop(key)
                    if handle is not _LANDED:
                        transfers.prefetch_used(handle)
                    self.n_prefetch_used += 1
                    outcome.append(self._prefetch_hit)
                else:
                    outcome.append(hit)
            elif key in copies:
                handle = copies[key]
                if unused.pop(key, None) is not None:
                    transfers.prefetch_used(handle)
                    self.n_prefetch_used += 1
                transfers.awaited(handle)
                wait.append(handle)
                self.n_inflight += 1
                outcome.append(self._inflight)
            else:
                if missing is None:
                    missing = []
                missing.append(key)
                outcome.append(self._miss)
        on_cpu: frozenset[int] | set[int] = _NONE
        if missing is not None:  # 2 to 4: place, admit, evict, then demand and stream copies
            layer, cache = ctx.layer, self.cache
            self.n_miss += len(missing)
            fetch, cpu, keep, low = place_and_admit(self.policy, ctx, missing, cache, layer,
                                                    self._evict, keys, self._gpu_admit_all)
            if low:  # low-precision copies: known to start_copy (their bytes) from now on
                self.lowbit.update(low)
            kept = set()
            start_copy, book = transfers.start_copy, self.memory.start_fetch
            for key in keep:
                if cache.free_slots(layer) > 0:
                    book(key)
                    handle = start_copy(key, DEMAND, layer)
                    if handle is None:
                        self._landed(key)
                    else:
                        copies[key] = handle
                        wait.append(handle)
                    kept.add(key)
            self.n_demand += len(kept)
            for key in fetch:
                if key not in kept:  # not admitted, or no slot: a scratch-buffer copy
                    handle = start_copy(key, STREAM, layer)
                    if handle is not None:
                        wait.append(handle)
                    self.n_stream += 1
            if cpu:
                self.n_cpu += len(cpu)
                on_cpu = set(cpu)
            if low or self.lowbit:  # HOBBIT: computations from low-precision copies
                self._count_lowbit(keys, [key for key in low if key not in kept])
        else:
            if self.lowbit:
                self._count_lowbit(keys, ())
            if self._quiet and not copies:  # a quiet layer: the policy declared no plan here
                return outcome, wait, on_cpu
        plan = self._prefetch_of(ctx)  # 5. speculative copies
        if plan.cancel:
            self._cancel(plan.cancel, keys)
        if plan.keys:
            self._prefetch(plan.keys, keys, ctx.layer)
        return outcome, wait, on_cpu

    def _count_lowbit(self, keys: Sequence[int], streamed: Sequence[int]) -> None:
        """Count the layer's computations from low-precision copies (resident, in flight or
        streamed now), then forget the streamed ones (they held no slot)."""
        lowbit = self.lowbit
        self.n_lowbit += sum(1 for key in keys if key in lowbit)
        lowbit.difference_update(streamed)

    def hits(self, accesses: int) -> int:
        """Of ``accesses`` (the sum of ``len(ctx.keys)`` over the layers run), those resident
        when their layer started."""
        return accesses - self.n_miss - self.n_inflight

    def _prefetch(self, plan_keys: list[int], protected: Sequence[int], layer: int) -> None:
        """Step 5's copies: the plan, checked, with room made (:func:`plan_with_room`)."""
        fetch = plan_with_room(self.policy.name, plan_keys, self.cache, self.n_layers,
                               self.n_experts, self._evict, protected)
        unused, prefetching, copies = self.unused, self.prefetching, self.copies
        start_copy, book = self.transfers.start_copy, self.memory.start_fetch
        for key in fetch:
            book(key)
            handle = start_copy(key, PREFETCH, layer)
            if handle is None:
                self._landed(key)
                unused[key] = _LANDED
            else:
                copies[key] = handle
                unused[key] = handle
                prefetching.add(key)
        self.n_prefetch += len(fetch)

    def _cancel(self, cancel: Sequence[int], protected: Sequence[int]) -> None:
        """Abandon the named in-flight prefetches: checked, slot freed, ``on_evict``."""
        policy, copies, prefetching = self.policy, self.copies, self.prefetching
        self.transfers.before_cancel()
        for key in cancel:
            validate_cancel(policy.name, key, PREFETCH if key in prefetching else
                            (DEMAND if key in copies else None), protected)
            self.transfers.cancel_copy(copies.pop(key))
            prefetching.discard(key)
            self.unused.pop(key, None)
            self.lowbit.discard(key)
            self.memory.remove(key)
            policy.on_evict(key)
            self.n_cancelled += 1

    def abandon_all(self) -> list[Any]:
        """The run ended: forget every in-flight copy (slots freed, no policy call) and return
        their handles for the engine to cancel."""
        handles = list(self.copies.values())
        for key in list(self.copies):
            self.memory.remove(key)
        self.copies.clear()
        self.prefetching.clear()
        self.lowbit.intersection_update(self.cache.resident)
        return handles


def declared(policy: Policy, name: str) -> bool:
    """A fast-path declaration (:attr:`~policies.base.Policy.quiet_no_prefetch`,
    :attr:`~policies.base.Policy.gpu_admit_all`) made by the policy object itself, on its
    instance or its class: a wrapper that overrides some methods and forwards other attributes
    to an inner policy (``__getattr__``) does not inherit the inner policy's declarations, which
    speak for the inner policy's methods only."""
    own = getattr(policy, "__dict__", {})
    return bool(own[name] if name in own else getattr(type(policy), name, False))


# ---- the checks every engine applies -------------------------------------------------------------
def validate_plan(name: str, keys: list[int], cache: SlotCache, n_layers: int,
                  n_experts: int) -> None:
    """Raise PolicyViolation unless every planned key is valid, absent from the cache and unique."""
    n_keys = n_layers * n_experts
    resident, in_flight = cache.resident, cache.in_flight
    for key in keys:  # is_valid_key, inlined: this runs at every layer
        if type(key) is not int or not 0 <= key < n_keys:
            raise PolicyViolation(f"{name}: prefetch key {key!r} is not a valid key")
        if key in resident or key in in_flight:
            raise PolicyViolation(f"{name}: prefetch of key {key}, which is already present")
    if len(keys) > 1 and len(set(keys)) != len(keys):
        twice = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise PolicyViolation(f"{name}: prefetch of key {twice}, which is planned twice")


def place_and_admit(policy: Policy, ctx: LayerContext, missing: Sequence[int],
                    cache: SlotCache, layer: int,
                    evict: Callable[[int, int, Sequence[int]], None], protected: Sequence[int],
                    declared: bool = False
                    ) -> tuple[list[int], list[int], list[int], list[int]]:
    """Steps 2 to 4 of the contract: place the missing keys, admit the GPU ones, and free slots
    in ``layer``'s pool for the admitted ones with one ``evict(need, layer, protected)`` call
    (``protected``: the keys the layer needs). Returns ``(fetch, cpu, admitted, low)``: keys to
    copy (admitted or streamed), keys computed on the host, the admitted subset of ``fetch``, and
    the subset of ``fetch`` copied at low precision (placement "gpu-lowbits"). A bad placement
    raises :class:`PolicyViolation`. ``declared``: the policy declared
    :attr:`~policies.base.Policy.gpu_admit_all`, so it is not asked (all GPU, all admitted, none
    at low precision)."""
    if declared:
        fetch, cpu, admitted, low = list(missing), [], list(missing), []
    else:
        try:
            fetch, cpu, low = split_placement(policy, ctx, missing)
        except PlacementError as exc:
            raise PolicyViolation(str(exc)) from None
        admitted = [key for key in fetch if policy.admit(key, ctx)]
    need = len(admitted) - cache.free_slots(layer)
    if need > 0:
        evict(need, layer, protected)
    return fetch, cpu, admitted, low


def choose_victims(policy: Policy, cache: SlotCache, need: int, layer: int,
                   protected: Sequence[int], n_experts: int) -> list[int]:
    """``policy.evict(cache, need, layer)``, checked: at most ``need`` distinct resident keys,
    none the current layer needs (``protected``), all of ``layer``'s partition when the cache is
    partitioned. Raises :class:`PolicyViolation` before the caller frees any slot; the caller
    frees them and calls ``policy.on_evict``."""
    name = policy.name
    victims = list(policy.evict(cache, need, layer))
    if len(victims) > need or (len(victims) > 1 and len(set(victims)) != len(victims)):
        raise PolicyViolation(f"{name}: evict({need}) returned {victims}")
    resident, partitioned = cache.resident, cache.partition_slots is not None and layer >= 0
    for key in victims:
        if key not in resident:
            raise PolicyViolation(f"{name}: evicted key {key}, which is not resident"
                                  + (" (it is in flight)" if key in cache.in_flight else ""))
        if key in protected:
            raise PolicyViolation(f"{name}: evicted key {key}, needed by the current layer")
        if partitioned and key // n_experts != layer:
            raise PolicyViolation(f"{name}: evicted key {key} outside layer {layer}'s "
                                  f"partition")
    return victims


def validate_cancel(name: str, key: int, purpose: str | None, protected: Sequence[int]) -> None:
    """Raise PolicyViolation unless a cancelled ``key`` is a prefetch in flight (``purpose``: its
    copy's, None when no copy is in flight) that the current layer does not need."""
    if purpose != PREFETCH:
        raise PolicyViolation(f"{name}: cancelled key {key}, which is not a prefetch in flight")
    if key in protected:
        raise PolicyViolation(f"{name}: cancelled key {key}, needed by the current layer")


def plan_with_room(name: str, keys: Sequence[int], cache: SlotCache, n_layers: int,
                   n_experts: int, evict: Callable[[int, int, Sequence[int]], None],
                   protected: Sequence[int]) -> list[int]:
    """Step 5 of the contract: check a prefetch plan (:func:`validate_plan`), free slots for it
    with one ``evict(need, layer, protected)`` call for the whole plan (``layer`` -1), or one per
    partition (the keys' layer) when the cache is partitioned, and return the keys that get a
    slot, in order, for the caller to start a fetch (taking one slot) for each. Unpartitioned,
    the rest of the plan is dropped at the first key without room; partitioned, only the keys
    whose partition is full."""
    if not keys:
        return []
    validate_plan(name, keys, cache, n_layers, n_experts)
    if cache.partition_slots is None:
        free = cache.free_slots()
        if len(keys) > free:
            evict(len(keys) - free, -1, protected)
            free = cache.free_slots()
        return list(keys) if free >= len(keys) else list(keys[:max(free, 0)])
    per_layer: dict[int, int] = {}
    for key in keys:
        per_layer[key // n_experts] = per_layer.get(key // n_experts, 0) + 1
    for layer, count in per_layer.items():
        need = count - cache.free_slots(layer)
        if need > 0:
            evict(need, layer, protected)
    free_in = {layer: cache.free_slots(layer) for layer in per_layer}
    out = []
    for key in keys:
        layer = key // n_experts
        if free_in[layer] > 0:
            out.append(key)
            free_in[layer] -= 1
    return out
