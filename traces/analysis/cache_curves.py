"""Expert-cache behaviour of a trace: LRU stack distances, the LRU hit-ratio curve and Belady.

Access stream
-------------
The stream a cache sees is: for each token in row order, for each MoE layer ``0 .. L-1``, the
token's ``k`` keys ``(layer, expert)`` in slot order. A key's id is ``layer * E + expert``; the key
universe has ``K = L * E`` keys (:attr:`ModelSpec.num_expert_keys`). Access ``i`` of token ``t``,
layer ``l``, slot ``s`` has stream index ``i = (t * L + l) * k + s`` -- the C order of
``expert_ids``, so the stream is never materialised for a trace.

Stack (LRU) distance
--------------------
The stack distance of an access is the number of *distinct other* keys accessed since the
previous access of the same key; a first access has an infinite distance (reported as ``-1`` by
:func:`stack_distances`, and in the last bin, index ``K``, of the histogram). An LRU cache holding
``C`` keys hits exactly the accesses with distance ``< C`` (Mattson et al., 1970), so one pass gives
the hit ratio of every cache size::

    hit_ratio(C) = #{accesses with stack distance < C} / #accesses,   C = 0 .. K.

The pass is a numba kernel: every key keeps a mark (a set bit) at the slot of its latest access,
slots are handed out in increasing order, and the distance of an access is the number of marks
after the key's previous slot (a popcount over a block of words plus per-block counts). When the
slots run out (every ``3 K`` accesses) the live marks are renumbered in order, so the bitmap has
``4 K`` slots and an access costs ``O(1 + K / 512)``.

*Reuse distance in tokens*: for a non-first access, the token index difference between it and
the previous access of the same key (always >= 1: a key appears once per token).

Belady's MIN
------------
Demand paging: every missed key is loaded (no bypass); when the cache is full the resident key
whose next use is farthest in the future (never used again counts as farthest) is evicted first.
This is the optimal demand-paging policy, so its hit ratio is >= LRU's at every size. Next uses
come from the LRU pass (``lru_pass(trace, with_next_uses=True)``, 4 bytes per access); the kernel
keeps the resident keys' next uses in groups of about ``sqrt(C)`` slots with cached group maxima,
so a hit costs ``O(1)`` and a miss ``O(sqrt(C))`` in short branch-free loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from moe_offload_lab.traces.analysis._common import routing
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from numba import types
from numba.extending import intrinsic


# ---- kernels ------------------------------------------------------------------------------------
@intrinsic
def _popcount(typingctx, x):  # pragma: no cover - compiled
    """Number of set bits of a uint64 (LLVM ctpop)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


_WORDS_PER_BLOCK = 8  # a block of 8 words (512 slots) keeps a mark count


@numba.njit(cache=True, nogil=True)
def _lru_pass(ids, num_experts, distances, next_uses):  # pragma: no cover - compiled
    """Stack-distance histogram [K + 1] (last bin: first accesses) and token reuse histogram [T].

    ``distances`` is empty or gets the stack distance of every access (-1 for a first access);
    ``next_uses`` is empty or gets the stream index of every access's next use of the same key
    (N when there is none).

    Every key keeps a mark (a set bit) at the slot of its latest access; slots are handed out in
    increasing order, so the distance of an access is the number of marks after the key's previous
    slot: a popcount over a few words plus per-block counts. When the slots run out they are
    compacted (live marks renumbered in order).
    """
    n_tokens, n_layers, k = ids.shape
    n_keys = n_layers * num_experts
    n_total = n_tokens * n_layers * k
    want_distances = distances.shape[0] > 0
    want_next = next_uses.shape[0] > 0
    block_slots = 64 * _WORDS_PER_BLOCK
    size = max(block_slots, ((4 * n_keys + block_slots - 1) // block_slots) * block_slots)
    words = np.zeros(size // 64, np.uint64)
    blocks = np.zeros(size // block_slots, np.int64)
    slot_key = np.full(size, -1, np.int32)     # key whose latest access sits in a slot
    # per key (one row, one cache line): slot, token and stream index of its latest access;
    # row n_keys is a spare target for the branch-free compaction
    last = np.full((n_keys + 1, 4), -1, np.int64)
    stack_hist = np.zeros(n_keys + 1, np.int64)
    token_hist = np.zeros(max(n_tokens, 1), np.int64)
    n_blocks = blocks.shape[0]  # blocks of 512 slots
    one = np.uint64(1)
    zero = np.uint64(0)
    full = ~zero
    next_slot = 0
    live = 0
    i = 0
    for t in range(n_tokens):
        for layer in range(n_layers):
            base = layer * num_experts
            for s in range(k):
                key = base + ids[t, layer, s]
                if next_slot == size:  # compact: renumber the live marks 0 .. live-1 in order
                    j = 0
                    for slot in range(size):  # branch-free: empty slots write to a spare entry
                        owner = slot_key[slot]
                        slot_key[slot] = -1
                        slot_key[j] = owner
                        last[owner if owner >= 0 else n_keys, 0] = j
                        j += owner >= 0
                    slot_key[j:] = -1
                    words[:] = 0
                    blocks[:] = 0
                    for x in range(j >> 6):
                        words[x] = full
                    if j & 63:
                        words[j >> 6] = (one << np.uint64(j & 63)) - one
                    for b in range(n_blocks):
                        blocks[b] = max(0, min(block_slots, j - b * block_slots))
                    next_slot = j
                prev = last[key, 0]
                if prev >= 0:
                    w = prev >> 6
                    bit = np.uint64(prev & 63)
                    blk = w // _WORDS_PER_BLOCK
                    # marks strictly after prev: in prev's block (fixed-length, branch-free loop
                    # over its words), then in the later blocks up to the one of the newest mark
                    above = (full << bit) << one
                    first = blk * _WORDS_PER_BLOCK
                    dist = np.int64(0)
                    for x in range(first, first + _WORDS_PER_BLOCK):
                        word = words[x]
                        word = word & above if x == w else word
                        word = zero if x < w else word
                        dist += np.int64(_popcount(word))
                    for b in range(blk + 1, (next_slot - 1) // block_slots + 1):
                        dist += blocks[b]
                    stack_hist[dist] += 1
                    if want_distances:
                        distances[i] = dist
                    if want_next:
                        next_uses[last[key, 2]] = i
                    words[w] &= ~(one << bit)
                    blocks[blk] -= 1
                    slot_key[prev] = -1
                    live -= 1
                    token_hist[t - last[key, 1]] += 1
                else:
                    stack_hist[n_keys] += 1
                    if want_distances:
                        distances[i] = -1
                words[next_slot >> 6] |= one << np.uint64(next_slot & 63)
                blocks[next_slot // block_slots] += 1
                slot_key[next_slot] = key
                last[key, 0] = next_slot
                last[key, 1] = t
                last[key, 2] = i
                next_slot += 1
                live += 1
                i += 1
    if want_next:
        for key in range(n_keys):
            if last[key, 2] >= 0:
                next_uses[last[key, 2]] = n_total
    return stack_hist, token_hist


@numba.njit(cache=True, nogil=True)
def _belady_hits(ids, num_experts, next_uses, capacity):  # pragma: no cover - compiled
    """Hits of Belady's MIN (demand paging) with ``capacity`` keys on the trace stream.

    The cache has ``capacity`` slots, each holding ``next_use << shift | slot`` of its key (-1
    while empty), in groups of about ``sqrt(capacity)`` slots with a cached group maximum; packing
    the slot into the value makes the maximum name its slot. A hit raises its slot's value, so
    the group maximum is updated with one ``max``; a miss into a full cache takes the maximum of
    the group maxima (the farthest next use), evicts that slot's key, writes the new key there and
    recomputes that group's maximum. Both scans are short branch-free loops.
    """
    n_tokens, n_layers, k = ids.shape
    n_keys = n_layers * num_experts
    if capacity <= 0 or n_tokens == 0:
        return 0
    capacity = min(capacity, n_keys)
    group = 8
    while group * group < capacity:
        group *= 2
    n_groups = (capacity + group - 1) // group
    shift = 1
    while (1 << shift) < n_groups * group:
        shift += 1
    slot_mask = (1 << shift) - 1
    values = np.full(n_groups * group, -1, np.int64)
    group_max = np.full(n_groups, -1, np.int64)
    slot_of = np.full(n_keys, -1, np.int64)
    key_of = np.full(n_groups * group, -1, np.int64)
    used = 0
    hits = 0
    i = 0
    for t in range(n_tokens):
        for layer in range(n_layers):
            base = layer * num_experts
            for s in range(k):
                key = base + ids[t, layer, s]
                nxt = np.int64(next_uses[i]) << shift
                i += 1
                slot = slot_of[key]
                if slot >= 0:  # hit: the slot's next use only grows
                    hits += 1
                    value = nxt | slot
                    values[slot] = value
                    g = slot // group
                    group_max[g] = max(group_max[g], value)
                    continue
                if used < capacity:
                    slot = used
                    used += 1
                    value = nxt | slot
                    values[slot] = value
                    g = slot // group
                    group_max[g] = max(group_max[g], value)
                else:  # evict the farthest next use; the new key takes its slot
                    far = np.int64(-1)
                    for g in range(n_groups):
                        far = max(far, group_max[g])
                    slot = far & slot_mask
                    slot_of[key_of[slot]] = -1
                    values[slot] = nxt | slot
                    g = slot // group
                    first = g * group
                    top = np.int64(-1)
                    for x in range(first, first + group):
                        top = max(top, values[x])
                    group_max[g] = top
                slot_of[key] = slot
                key_of[slot] = key
    return hits


# ---- stream helpers -----------------------------------------------------------------------------
_NONE = np.empty(0, np.int64)


def _stream_as_ids(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """A plain key stream as a [N, 1, 1] routing array (one layer of ``num_keys`` experts)."""
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ConfigError("a key stream must be one-dimensional")
    if num_keys < 1:
        raise ConfigError(f"the key universe must hold at least one key, got {num_keys}")
    if keys.size and (keys.min() < 0 or keys.max() >= num_keys):
        raise ConfigError(f"stream keys must lie in [0, {num_keys})")
    dtype = np.int16 if num_keys <= np.iinfo(np.int16).max + 1 else np.int32
    return np.ascontiguousarray(keys, dtype=dtype).reshape(-1, 1, 1)


def _index_dtype(n: int) -> type:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def access_keys(trace: Trace) -> np.ndarray:
    """The trace's access stream as int32 key ids ``layer * E + expert`` (length T * L * k).

    Only for inspection and tests: the analysis kernels read ``expert_ids`` directly.
    """
    ids = routing(trace)
    offsets = (np.arange(ids.shape[1], dtype=np.int32) * trace.spec.num_experts)[None, :, None]
    return (ids.astype(np.int32) + offsets).reshape(-1)


def stack_distances(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Stack (LRU) distance of every access of a plain key stream (int64); -1 for first accesses.

    ``keys`` are ints in ``[0, num_keys)``; :func:`access_keys` gives a trace's stream.
    """
    ids = _stream_as_ids(keys, num_keys)
    out = np.empty(ids.shape[0], np.int64)
    if out.size:
        _lru_pass(ids, num_keys, out, _NONE)
    return out


@dataclass(frozen=True)
class LruPass:
    """Result of one LRU pass over an access stream.

    ``stack_histogram[d]`` counts accesses with stack distance ``d`` (``d < K``); the last bin,
    ``stack_histogram[K]``, counts first accesses. ``token_histogram[g]`` counts non-first
    accesses whose previous use of the key was ``g`` tokens earlier. ``next_uses`` (when asked
    for) holds each access's next use of the same key as a stream index, ``N`` for none.
    """

    stack_histogram: np.ndarray
    token_histogram: np.ndarray
    next_uses: np.ndarray | None = None

    @property
    def num_accesses(self) -> int:
        """Number of accesses in the stream."""
        return int(self.stack_histogram.sum())

    def hit_ratio_curve(self) -> np.ndarray:
        """LRU hit ratio for every cache size ``C = 0 .. K`` keys (float64 [K + 1])."""
        return hit_ratio_curve(self.stack_histogram)

    def reuse_distance_tokens(self) -> dict[str, float]:
        """``{"mean", "p50", "p90"}`` of the reuse distance in tokens (NaN without reuse)."""
        return histogram_summary(self.token_histogram)


def _run_lru(ids: np.ndarray, num_experts: int, with_next_uses: bool) -> LruPass:
    nexts = np.empty(ids.size, _index_dtype(ids.size)) if with_next_uses and ids.size else None
    stack_hist, token_hist = _lru_pass(ids, num_experts, _NONE,
                                       nexts if nexts is not None else _NONE)
    if with_next_uses and nexts is None:
        nexts = np.empty(0, np.int32)
    return LruPass(stack_hist, token_hist[: max(ids.shape[0], 1)], nexts)


def lru_pass(trace: Trace, *, with_next_uses: bool = False) -> LruPass:
    """Stack-distance and token-reuse histograms of a trace's stream, in one numba pass.

    ``with_next_uses=True`` also fills :attr:`LruPass.next_uses` (4 bytes per access) for
    :func:`belady_hit_ratios`.
    """
    return _run_lru(routing(trace), trace.spec.num_experts, with_next_uses)


def stream_lru_pass(keys: np.ndarray, num_keys: int, *, with_next_uses: bool = False) -> LruPass:
    """:func:`lru_pass` for a plain key stream (each access counts as its own 'token')."""
    return _run_lru(_stream_as_ids(keys, num_keys), num_keys, with_next_uses)


def hit_ratio_curve(stack_histogram: np.ndarray) -> np.ndarray:
    """LRU hit ratio at every cache size from a stack-distance histogram of ``K + 1`` bins.

    ``curve[C] = #(distance < C) / #accesses`` for ``C = 0 .. K``; all zeros without accesses.
    """
    hist = np.asarray(stack_histogram, dtype=np.int64)
    total = int(hist.sum())
    curve = np.zeros(hist.size, dtype=np.float64)
    if total:
        curve[1:] = np.cumsum(hist[:-1]) / total
    return curve


def lru_hit_ratio_curve(trace: Trace) -> np.ndarray:
    """LRU hit ratio of the trace's stream for every cache size ``C = 0 .. K`` keys."""
    return lru_pass(trace).hit_ratio_curve()


def histogram_summary(histogram: np.ndarray) -> dict[str, float]:
    """Mean, p50 and p90 of values ``0 .. n-1`` given their counts.

    Percentiles interpolate linearly like ``numpy.percentile``'s default; NaN when empty.
    """
    hist = np.asarray(histogram, dtype=np.int64)
    total = int(hist.sum())
    if total == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan")}
    values = np.arange(hist.size, dtype=np.float64)
    cum = np.cumsum(hist)
    out = {"mean": float(np.dot(values, hist) / total)}
    for name, q in (("p50", 50.0), ("p90", 90.0)):
        pos = q / 100.0 * (total - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        v_lo = float(np.searchsorted(cum, lo, side="right"))
        v_hi = float(np.searchsorted(cum, hi, side="right"))
        out[name] = v_lo + (pos - lo) * (v_hi - v_lo)
    return out


# ---- Belady -------------------------------------------------------------------------------------
def _capacities(cache_keys: list[int] | tuple[int, ...] | np.ndarray) -> np.ndarray:
    caps = np.atleast_1d(np.asarray(cache_keys, dtype=np.int64))
    if caps.ndim != 1 or (caps < 0).any():
        raise ConfigError(f"cache sizes must be non-negative integers, got {cache_keys!r}")
    return caps


def belady_hit_ratios(trace: Trace, cache_keys: list[int] | tuple[int, ...] | np.ndarray, *,
                      next_uses: np.ndarray | None = None) -> np.ndarray:
    """Hit ratios of Belady's MIN for several cache sizes (in keys), in one pass over the stream.

    ``next_uses`` (from ``lru_pass(trace, with_next_uses=True)``) saves recomputing them.
    NaN for an empty trace.
    """
    caps = _capacities(cache_keys)
    ids = routing(trace)
    if ids.size == 0:
        return np.full(caps.size, np.nan)
    if next_uses is None:
        next_uses = _run_lru(ids, trace.spec.num_experts, True).next_uses
    if next_uses.shape != (ids.size,):
        raise ConfigError(f"next_uses has shape {next_uses.shape}, expected ({ids.size},)")
    hits = [_belady_hits(ids, trace.spec.num_experts, next_uses, int(c)) for c in caps]
    return np.asarray(hits, dtype=np.float64) / ids.size


def belady_hit_ratio(trace: Trace, cache_keys: int) -> float:
    """Hit ratio of Belady's MIN with a cache of ``cache_keys`` keys on the trace's stream."""
    return float(belady_hit_ratios(trace, [cache_keys])[0])


def stream_belady_hits(keys: np.ndarray, num_keys: int,
                       cache_keys: int | list[int] | np.ndarray) -> np.ndarray:
    """Hits of Belady's MIN on a plain key stream, one count per cache size (int64 array)."""
    caps = _capacities(cache_keys)
    ids = _stream_as_ids(keys, num_keys)
    if ids.size == 0:
        return np.zeros(caps.size, np.int64)
    nexts = _run_lru(ids, num_keys, True).next_uses
    return np.asarray([_belady_hits(ids, num_keys, nexts, int(c)) for c in caps], np.int64)
