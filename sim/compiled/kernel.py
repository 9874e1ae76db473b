"""The compiled engine's kernel: numba functions over flat state arrays (imported on first use).

One call of :func:`run_steps` runs whole steps of the engine's loop
(:meth:`sim.engine.Engine._main`, its usual case: every expert on the GPU, copies overlapping
compute, with or without computing while copying) for a
:class:`~policies.composed.ComposedPolicy` of the family :mod:`sim.compiled.eligibility` admits,
together with the protocol's books (:class:`~policies.protocol.LayerProtocol`), the global LRU
order (:class:`~policies.replacement.lru.LRU`), the gate-lookahead predictor with the next-layer
planner, and the direct link (:class:`~sim.link.DirectLink`, unchunked). Every float is the same
sum, in the same order, as the Python engine's, so the rows are equal to the bit.
:func:`finish` is the end of a run (in-flight copies abandoned and cancelled, the link drained).

State lives in arrays the driver (:mod:`sim.compiled.runner`) keeps between calls:

- ``ist`` int64 [I_SIZE] and ``fst`` float64 [F_SIZE]: the scalars (indices ``I_*``, ``F_*``);
- ``kint`` int64 [L*E, K_SIZE]: per key (a row each, its fields together in memory), its slot
  state (``K_STATE``: 0 absent, 1 resident, 2 a slot copy in flight), the prefetch-not-yet-used
  mark, the LRU list's links (oldest at
  ``I_HEAD``), the planner's wanted mark, scratch stamps, and its copy's record (a key has at
  most one copy that anything still refers to: its slot copy, or a streamed copy within one
  layer, models of two layers or more);
- ``kflt`` float64 [L*E, C_FIELDS]: its copy's start, ready and end times and its source's
  bandwidth;
- with a host tier (:class:`~sim.host.HostTier` without a tiered rule): which keys host DRAM
  holds, as a second LRU list (``K_DIN``, ``K_DPREV``, ``K_DNEXT``, ``I_DHEAD``...);
- ``heap_code``, ``heap_key`` [H]: the link's queue, a binary heap of ``priority << 40 | seq``
  (the Python link's ``(priority, seq)`` tuples, unique) with the key of each entry; an entry
  is stale unless its key's copy is queued with that priority and sequence number.

Rows go to ``out`` [N], records of the log's packed row type (:data:`~sim.eventlog.ROW_DTYPE`,
so the driver appends their bytes as they are); ``marks`` [M] collects the rows logged before the
call whose prefetch got its first access (the driver applies ``EventLog.mark_prefetch_used``).
"""

from __future__ import annotations

import numba
import numpy as np

# ---- scalar state: ist ---------------------------------------------------------------------------
I_RUNNING, I_SEQ, I_KICKED, I_DUE, I_HEAPN, I_OCC, I_HEAD, I_TAIL = 0, 1, 2, 3, 4, 5, 6, 7
I_NWANTED, I_EVENTS, I_STAMP, I_VSTAMP, I_ERR, I_ERRKEY = 8, 9, 10, 11, 12, 13
I_N_MISS, I_N_INFLIGHT, I_N_DEMAND, I_N_STREAM, I_N_PREFETCH = 14, 15, 16, 17, 18
I_N_USED, I_N_EVICTED, I_OUT_N, I_MARK_N, I_LRU_N = 19, 20, 21, 22, 23
I_DHEAD, I_DTAIL, I_DN, I_NVME_READS = 24, 25, 26, 27  # the host tier's DRAM LRU
I_SIZE = 28
# ---- scalar state: fst ---------------------------------------------------------------------------
F_NOW, F_NEXT, F_LAST_END, F_CUR_LATENCY, F_CLOCK = 0, 1, 2, 3, 4
F_SIZE = 5
# ---- per key: kint rows --------------------------------------------------------------------------
K_STATE, K_UNUSED, K_PREV, K_NEXT, K_WANTED, K_KEEP, K_VICTIM = 0, 1, 2, 3, 4, 5, 6
K_PURPOSE, K_PRIO, K_CSTATE, K_STEP, K_SEQ, K_ROW, K_USED, K_WAIT = 7, 8, 9, 10, 11, 12, 13, 14
K_DIN, K_DPREV, K_DNEXT = 15, 16, 17  # host DRAM: in it, and its LRU list's links
K_SIZE = 18
# ---- per key: kflt rows --------------------------------------------------------------------------
C_START, C_READY, C_END, C_BW = 0, 1, 2, 3  # C_BW: the copy's source bandwidth (0: the link's)
C_FIELDS = 4
# copy states (sim.link.Copy.state)
NEW, QUEUED, RUNNING, DONE, CANCELLED = 0, 1, 2, 3, 4
# link event due (DirectLink._due)
DUE_NONE, DUE_END, DUE_KICK = 0, 1, 2
# errors the driver turns into the Python engine's exceptions
ERR_NONE, ERR_BAD_KEY, ERR_TWICE, ERR_ROOM, ERR_STUCK = 0, 1, 2, 3, 4
# event-log codes (sim.eventlog: KINDS, RESOURCES, DETAILS)
KIND_COPY, KIND_COMPUTE, KIND_STALL, KIND_POLICY, KIND_STEP = 0, 1, 2, 3, 4
RES_NONE, RES_LINK, RES_GPU = 0, 1, 2
D_DEMAND, D_STREAM, D_PREFETCH, D_USED, D_CANCELLED, D_OTHER = 1, 2, 3, 4, 5, 6
D_HIT, D_PREFETCH_HIT, D_INFLIGHT, D_MISS, D_DECISION, D_STEP, D_WAIT = 7, 8, 9, 10, 12, 13, 14
# run constants: consts (int64) and fconsts (float64)
C_LAYERS, C_EXPERTS, C_TOPK, C_CAPACITY, C_EXPERT_BYTES, C_PIPELINED, C_CWC = 0, 1, 2, 3, 4, 5, 6
C_GATE, C_PLAN_N, C_RES_DECISION, C_FOLD_ROWS, C_BUF_ROWS, C_ROW0, C_STEP_ROOM = (
    7, 8, 9, 10, 11, 12, 13)
C_HOST, C_DRAM_CAP = 14, 15  # a host tier (sim.host, no tiered rule) and its DRAM experts
C_SIZE = 16
CF_BYTES_PER_S, CF_LATENCY_S, CF_SYNC_S, CF_HOST_LINK, CF_NVME = 0, 1, 2, 3, 4
CF_SIZE = 5
_SEQ_BITS = 40
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_INF = np.inf

jit = numba.njit(cache=True)
# inlined where called (numba's IR): the callers' constant field indices then reach the compiler
# (the list operations run at every access; as calls with runtime indices they cost 18%)
inline = numba.njit(cache=True, inline="always")


# ---- rows ----------------------------------------------------------------------------------------
@jit
def _row(ist, out, kind, start, end, step, layer, expert, nbytes, resource, detail, count
         ):  # pragma: no cover - compiled
    """Append one row (an :data:`~sim.eventlog.ROW_DTYPE` record); returns its index in the
    call's output."""
    n = ist[I_OUT_N]
    row = out[n]
    row.kind = kind
    row.start_s = start
    row.end_s = end
    row.step = step
    row.layer = layer
    row.expert = expert
    row.bytes = nbytes
    row.resource = resource
    row.detail = detail
    row.count = count
    ist[I_OUT_N] = n + 1
    return n


# ---- the LRU order (a doubly linked list over keys, oldest at I_HEAD) ----------------------------
@inline
def _list_append(ist, kint, key, head, tail, prev, nxt, count):  # pragma: no cover - compiled
    """Append ``key`` to a doubly linked list over keys (its ends at ``ist[head]``,
    ``ist[tail]``, its links in columns ``prev`` and ``nxt`` of ``kint``, its length at
    ``ist[count]``)."""
    last = ist[tail]
    kint[key, prev] = last
    kint[key, nxt] = -1
    if last >= 0:
        kint[last, nxt] = key
    else:
        ist[head] = key
    ist[tail] = key
    ist[count] += 1


@inline
def _list_unlink(ist, kint, key, head, tail, prev, nxt, count):  # pragma: no cover - compiled
    """Remove ``key`` from such a list."""
    before, after = kint[key, prev], kint[key, nxt]
    if before >= 0:
        kint[before, nxt] = after
    else:
        ist[head] = after
    if after >= 0:
        kint[after, prev] = before
    else:
        ist[tail] = before
    kint[key, prev] = -1
    kint[key, nxt] = -1
    ist[count] -= 1


@jit
def _lru_append(ist, kint, key):  # pragma: no cover - compiled
    """The GPU cache's LRU order: ``key`` becomes the most recent."""
    _list_append(ist, kint, key, I_HEAD, I_TAIL, K_PREV, K_NEXT, I_LRU_N)


@jit
def _lru_unlink(ist, kint, key):  # pragma: no cover - compiled
    """Remove ``key`` from the LRU order."""
    _list_unlink(ist, kint, key, I_HEAD, I_TAIL, K_PREV, K_NEXT, I_LRU_N)


@jit
def _source_bw(ist, kint, consts, fconsts, key):  # pragma: no cover - compiled
    """HostTier.source_bytes_per_s without a tiered rule: a key in DRAM becomes its most recent
    and copies at the tier's link speed; one read from NVMe enters DRAM (the least recent
    leave) and copies at NVMe speed."""
    if kint[key, K_DIN] != 0:
        _list_unlink(ist, kint, key, I_DHEAD, I_DTAIL, K_DPREV, K_DNEXT, I_DN)
        _list_append(ist, kint, key, I_DHEAD, I_DTAIL, K_DPREV, K_DNEXT, I_DN)
        return fconsts[CF_HOST_LINK]
    ist[I_NVME_READS] += 1
    cap = consts[C_DRAM_CAP]
    if cap > 0:
        over = ist[I_DN] + 1 - cap
        if over > 0:
            for _ in range(min(over, ist[I_DN])):
                old = ist[I_DHEAD]
                kint[old, K_DIN] = 0
                _list_unlink(ist, kint, old, I_DHEAD, I_DTAIL, K_DPREV, K_DNEXT, I_DN)
        if ist[I_DN] + 1 <= cap:
            kint[key, K_DIN] = 1
            _list_append(ist, kint, key, I_DHEAD, I_DTAIL, K_DPREV, K_DNEXT, I_DN)
    return fconsts[CF_NVME]


# ---- the link's queue ----------------------------------------------------------------------------
@jit
def _heap_push(ist, heap_code, heap_key, code, key):  # pragma: no cover - compiled
    n = ist[I_HEAPN]
    if n >= heap_code.shape[0]:
        ist[I_ERR] = ERR_ROOM
        return
    i = n
    heap_code[i] = code
    heap_key[i] = key
    ist[I_HEAPN] = n + 1
    while i > 0:
        parent = (i - 1) >> 1
        if heap_code[parent] <= code:
            break
        heap_code[i] = heap_code[parent]
        heap_key[i] = heap_key[parent]
        i = parent
    heap_code[i] = code
    heap_key[i] = key


@jit
def _heap_pop(ist, heap_code, heap_key):  # pragma: no cover - compiled
    """Remove the smallest entry; returns its position's old (code, key)."""
    code, key = heap_code[0], heap_key[0]
    n = ist[I_HEAPN] - 1
    ist[I_HEAPN] = n
    if n > 0:
        last_code, last_key = heap_code[n], heap_key[n]
        i = 0
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and heap_code[child + 1] < heap_code[child]:
                child += 1
            if heap_code[child] >= last_code:
                break
            heap_code[i] = heap_code[child]
            heap_key[i] = heap_key[child]
            i = child
        heap_code[i] = last_code
        heap_key[i] = last_key
    return code, key


@jit
def _pop_valid(ist, kint, heap_code, heap_key):  # pragma: no cover - compiled
    """Link._pop: the best queued copy's key (stale entries dropped), -1 when none."""
    while ist[I_HEAPN] > 0:
        code, key = _heap_pop(ist, heap_code, heap_key)
        if kint[key, K_CSTATE] == QUEUED and kint[key, K_SEQ] == (code & _SEQ_MASK) \
                and kint[key, K_PRIO] == (code >> _SEQ_BITS):
            return key
    return -1


# ---- the link ------------------------------------------------------------------------------------
@jit
def _start_next(ist, fst, kint, kflt, heap_code, heap_key, consts, fconsts
                ):  # pragma: no cover - compiled
    """Link._start_next (unchunked, no extra link time, the link's own bandwidth)."""
    key = _pop_valid(ist, kint, heap_code, heap_key)
    if key < 0:
        return
    now = fst[F_NOW]
    ready = kflt[key, C_READY]
    start = now if now > ready else ready
    kflt[key, C_START] = start
    kint[key, K_CSTATE] = RUNNING
    ist[I_RUNNING] = key
    if consts[C_PIPELINED] != 0 and start == fst[F_LAST_END]:
        latency = 0.0
    else:
        latency = fconsts[CF_LATENCY_S]
    fst[F_CUR_LATENCY] = latency
    bw = kflt[key, C_BW]
    if bw == 0.0:
        bw = fconsts[CF_BYTES_PER_S]
    delay = start - now + latency + consts[C_EXPERT_BYTES] / bw + 0.0
    fst[F_NEXT] = now + delay
    ist[I_DUE] = DUE_END


@jit
def _complete(ist, fst, kint, kflt, out, consts, key, now
              ):  # pragma: no cover - compiled
    """Link._complete and the protocol's copy_done (a slot copy becomes resident, LRU's
    on_insert)."""
    n_experts = consts[C_EXPERTS]
    kint[key, K_CSTATE] = DONE
    kflt[key, C_END] = now
    purpose = kint[key, K_PURPOSE]
    detail = purpose
    if purpose == D_PREFETCH and kint[key, K_USED] != 0:
        detail = D_USED
    n = _row(ist, out, KIND_COPY, kflt[key, C_START], now, kint[key, K_STEP],
             key // n_experts, key % n_experts, consts[C_EXPERT_BYTES], RES_LINK, detail, 0)
    kint[key, K_ROW] = consts[C_ROW0] + n
    if purpose != D_STREAM:
        kint[key, K_STATE] = 1
        _lru_append(ist, kint, key)


@jit
def _fire(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts
          ):  # pragma: no cover - compiled
    """DirectLink._fire: the pending event (a copy's end, or a kick)."""
    due = ist[I_DUE]
    fst[F_NOW] = fst[F_NEXT]
    fst[F_NEXT] = _INF
    ist[I_DUE] = DUE_NONE
    ist[I_EVENTS] += 1
    if due == DUE_END:
        key = ist[I_RUNNING]
        ist[I_RUNNING] = -1
        now = fst[F_NOW]
        fst[F_LAST_END] = now
        _complete(ist, fst, kint, kflt, out, consts, key, now)
        if ist[I_ERR] != ERR_NONE:
            return
        _start_next(ist, fst, kint, kflt, heap_code, heap_key, consts, fconsts)
    elif due == DUE_KICK:
        ist[I_KICKED] = 0
        if ist[I_RUNNING] < 0:
            _start_next(ist, fst, kint, kflt, heap_code, heap_key, consts, fconsts)


@jit
def _advance(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts, t
             ):  # pragma: no cover - compiled
    """Link.advance: process every event due by ``t``."""
    while fst[F_NEXT] <= t and ist[I_ERR] == ERR_NONE:
        _fire(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts)


@jit
def _wait(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts, key
          ):  # pragma: no cover - compiled
    """Link.wait: run the link until ``key``'s copy lands."""
    while kint[key, K_CSTATE] != DONE and ist[I_ERR] == ERR_NONE:
        if fst[F_NEXT] == _INF:
            ist[I_ERR] = ERR_STUCK
            ist[I_ERRKEY] = key
            return
        _fire(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts)


@jit
def _new_copy(ist, kint, kflt, consts, fconsts, key, purpose, step, ready
              ):  # pragma: no cover - compiled
    """Engine.start_copy: a copy of ``key`` that may start at ``ready`` (the decision's end),
    at its source's bandwidth when there is a host tier."""
    kflt[key, C_BW] = _source_bw(ist, kint, consts, fconsts, key) if consts[C_HOST] != 0 \
        else 0.0
    kint[key, K_PURPOSE] = purpose
    kint[key, K_PRIO] = 1 if purpose == D_PREFETCH else 0
    kint[key, K_CSTATE] = NEW
    kint[key, K_STEP] = step
    kint[key, K_ROW] = -1
    kint[key, K_USED] = 0
    kflt[key, C_READY] = ready


# ---- the protocol's books ------------------------------------------------------------------------
@jit
def _choose(ist, kint, need, stamp, vstamp, soft, victims, nv):  # pragma: no cover - compiled
    """LRU.victims: append up to ``need`` oldest keys not needed now (``K_KEEP == stamp``), not
    wanted by the planner (when ``soft``) and not chosen yet; returns the victims' count."""
    start = nv
    key = ist[I_HEAD]
    while key >= 0:
        if nv - start >= need:
            return nv
        if kint[key, K_KEEP] != stamp and (soft == 0 or kint[key, K_WANTED] == 0) \
                and kint[key, K_VICTIM] != vstamp:
            victims[nv] = key
            kint[key, K_VICTIM] = vstamp
            nv += 1
        key = kint[key, K_NEXT]
    return nv


@jit
def _evict(ist, kint, need, victims):  # pragma: no cover - compiled
    """LayerProtocol._evict with ComposedPolicy.evict over LRU: victims protect the current
    layer's keys always and the planner's wanted keys while others exist; their slots are
    freed (LRU's on_remove)."""
    ist[I_VSTAMP] += 1
    vstamp, stamp = ist[I_VSTAMP], ist[I_STAMP]
    nv = _choose(ist, kint, need, stamp, vstamp, 1, victims, 0)
    if nv < need and ist[I_NWANTED] > 0:
        nv = _choose(ist, kint, need - nv, stamp, vstamp, 0, victims, nv)
    for i in range(nv):
        key = victims[i]
        kint[key, K_STATE] = 0
        kint[key, K_UNUSED] = 0
        ist[I_OCC] -= 1
        _lru_unlink(ist, kint, key)
    ist[I_N_EVICTED] += nv


@jit
def _mark_used(ist, kint, out, marks, consts, key):  # pragma: no cover - compiled
    """Engine.prefetch_used: the copy's row (logged already) says prefetch_used."""
    kint[key, K_USED] = 1
    row = kint[key, K_ROW]
    if row >= 0:
        local = row - consts[C_ROW0]
        if local >= 0:
            out[local].detail = D_USED
        else:
            marks[ist[I_MARK_N]] = row
            ist[I_MARK_N] += 1


@jit
def _plan(ist, kint, consts, la, first, n_tok, layer, wanted_keys, tally, picks, plan
          ):  # pragma: no cover - compiled
    """GateLookaheadPredictor.predict (distance 1) then NextLayerTopN.plan (min_confidence 0,
    no cancellation): the planned keys in ``plan``; returns their count, or -1 with I_ERR set
    on a plan the protocol refuses (an invalid key, or a key planned twice). ``tally`` [E] and
    ``picks`` [>= E] are scratch; ``wanted_keys`` holds the planner's wanted keys."""
    n_layers, n_experts, k = consts[C_LAYERS], consts[C_EXPERTS], consts[C_TOPK]
    n_keys = n_layers * n_experts
    for i in range(ist[I_NWANTED]):  # _start_plan: the plan and the wanted keys start empty
        kint[wanted_keys[i], K_WANTED] = 0
    ist[I_NWANTED] = 0
    m = 0
    if n_tok == 1:  # the gate's own order (filtered only when an end is -1, as in Python)
        filt = la[first, layer, 0] < 0 or la[first, layer, k - 1] < 0
        for j in range(k):
            e = la[first, layer, j]
            if filt and e < 0:
                continue
            picks[m] = e
            m += 1
    else:  # tokens per expert, most first (ties: lower expert first)
        for e in range(n_experts):
            tally[e] = 0
        for r in range(first, first + n_tok):
            for j in range(k):
                e = la[r, layer, j]
                if e >= 0:
                    if e >= n_experts:
                        ist[I_ERR] = ERR_BAD_KEY
                        ist[I_ERRKEY] = ((layer + 1) % n_layers) * n_experts + e
                        return -1
                    tally[e] += 1
        # the first ``limit`` of a stable sort by count, kept as the experts are scanned
        limit = consts[C_PLAN_N]
        for e in range(n_experts):
            c = tally[e]
            if c <= 0 or limit <= 0 or (m == limit and tally[picks[m - 1]] >= c):
                continue
            pos = m if m < limit else limit - 1
            while pos > 0 and tally[picks[pos - 1]] < c:
                picks[pos] = picks[pos - 1]
                pos -= 1
            picks[pos] = e
            if m < limit:
                m += 1
    if m > consts[C_PLAN_N]:
        m = consts[C_PLAN_N]
    base = ((layer + 1) % n_layers) * n_experts
    n_plan = 0
    for i in range(m):
        key = base + picks[i]
        if 0 <= key < n_keys:
            if kint[key, K_WANTED] == 0:
                kint[key, K_WANTED] = 1
                wanted_keys[ist[I_NWANTED]] = key
                ist[I_NWANTED] += 1
            if kint[key, K_STATE] == 0:
                plan[n_plan] = key
                n_plan += 1
        else:
            plan[n_plan] = key
            n_plan += 1
    for i in range(n_plan):  # validate_plan: valid keys first, then no key twice
        key = plan[i]
        if key < 0 or key >= n_keys:
            ist[I_ERR] = ERR_BAD_KEY
            ist[I_ERRKEY] = key
            return -1
    for i in range(1, n_plan):
        for j in range(i):
            if plan[j] == plan[i]:
                ist[I_ERR] = ERR_TWICE
                ist[I_ERRKEY] = plan[i]
                return -1
    return n_plan


# ---- whole steps ---------------------------------------------------------------------------------
@jit
def run_steps(ist, fst, kint, kflt, heap_code, heap_key, wanted_keys, out, marks, consts,
              fconsts, ids, la, bounds, step_ids, other_s, decision_s, gpu_s, s_begin, s_end
              ):  # pragma: no cover - compiled
    """Run steps ``s_begin`` .. at most ``s_end - 1`` of the arrays given (``bounds`` [S + 1]
    row offsets into ``ids`` [R, L, k] and ``la`` [R, L, k] (distance-1 lookahead; used when
    ``C_GATE``), ``step_ids`` [S] the steps' numbers, ``other_s`` and ``decision_s`` [S] their
    per-layer non-expert and decision seconds, ``gpu_s`` [T + 1] one expert's seconds by
    tokens). Stops after a step that fills the log past its fold threshold (``C_FOLD_ROWS``
    > 0), or before a step when fewer than ``C_STEP_ROOM`` output rows are left; returns the
    index of the next step to run."""
    n_layers, n_experts, k = consts[C_LAYERS], consts[C_EXPERTS], consts[C_TOPK]
    capacity, cwc, gate = consts[C_CAPACITY], consts[C_CWC], consts[C_GATE]
    sync_s = fconsts[CF_SYNC_S]
    row_cap = out.shape[0]
    scratch = max(n_experts, k) + 1
    keys = np.empty(scratch, dtype=np.int64)
    ex = np.empty(scratch, dtype=np.int64)
    tok = np.empty(scratch, dtype=np.int64)
    how = np.empty(scratch, dtype=np.int64)
    missing = np.empty(scratch, dtype=np.int64)
    wait = np.empty(scratch, dtype=np.int64)
    later = np.empty(scratch, dtype=np.int64)
    submit = np.empty(2 * scratch + capacity, dtype=np.int64)
    victims = np.empty(capacity + 1, dtype=np.int64)
    plan = np.empty(scratch, dtype=np.int64)
    counts = np.empty(scratch, dtype=np.int64)
    picks = np.empty(scratch, dtype=np.int64)
    tally = np.empty(scratch, dtype=np.int64)
    s = s_begin
    while s < s_end:
        if ist[I_OUT_N] + consts[C_STEP_ROOM] > row_cap:
            return s
        step = step_ids[s]
        first, last = bounds[s], bounds[s + 1]
        n_tok = last - first
        o_s, d_s = other_s[s], decision_s[s]
        clock = fst[F_CLOCK]
        step_start = clock
        _row(ist, out, KIND_COMPUTE, clock, clock + o_s, step, 0, -1, 0, RES_GPU,
             D_OTHER, n_tok)
        clock += o_s
        for layer in range(n_layers):
            # the layer's distinct experts (ascending) and tokens per expert (policies.needs)
            n_ex = 0
            if n_tok == 1:
                for j in range(k):
                    e = ids[first, layer, j]
                    pos = n_ex
                    while pos > 0 and ex[pos - 1] > e:
                        ex[pos] = ex[pos - 1]
                        pos -= 1
                    ex[pos] = e
                    n_ex += 1
                for j in range(n_ex):
                    tok[j] = 1
            else:
                for e in range(n_experts):
                    counts[e] = 0
                for r in range(first, last):
                    for j in range(k):
                        counts[ids[r, layer, j]] += 1
                for e in range(n_experts):
                    if counts[e] > 0:
                        ex[n_ex] = e
                        tok[n_ex] = counts[e]
                        n_ex += 1
            ist[I_STAMP] += 1
            stamp = ist[I_STAMP]
            for j in range(n_ex):
                keys[j] = layer * n_experts + ex[j]
                kint[keys[j], K_KEEP] = stamp
            if fst[F_NEXT] <= clock:
                _advance(ist, fst, kint, kflt, heap_code, heap_key, out, consts,
                         fconsts, clock)
            ready = clock + d_s
            # ---- the protocol: on_layer (LRU recency), outcomes ----
            for j in range(n_ex):
                key = keys[j]
                if kint[key, K_STATE] == 1:
                    _lru_unlink(ist, kint, key)
                    _lru_append(ist, kint, key)
            n_wait, n_miss = 0, 0
            for j in range(n_ex):
                key = keys[j]
                st = kint[key, K_STATE]
                if st == 1:
                    if kint[key, K_UNUSED] != 0:
                        kint[key, K_UNUSED] = 0
                        _mark_used(ist, kint, out, marks, consts, key)
                        ist[I_N_USED] += 1
                        how[j] = D_PREFETCH_HIT
                    else:
                        how[j] = D_HIT
                elif st == 2:
                    if kint[key, K_UNUSED] != 0:
                        kint[key, K_UNUSED] = 0
                        _mark_used(ist, kint, out, marks, consts, key)
                        ist[I_N_USED] += 1
                    # Link.promote: demand priority from now on
                    if kint[key, K_CSTATE] == QUEUED and kint[key, K_PRIO] != 0:
                        kint[key, K_PRIO] = 0
                        _heap_push(ist, heap_code, heap_key, kint[key, K_SEQ], key)
                    elif kint[key, K_CSTATE] == RUNNING:
                        kint[key, K_PRIO] = 0
                    wait[n_wait] = key
                    n_wait += 1
                    ist[I_N_INFLIGHT] += 1
                    how[j] = D_INFLIGHT
                else:
                    missing[n_miss] = key
                    n_miss += 1
                    how[j] = D_MISS
            n_submit = 0
            if n_miss > 0:  # place (all GPU), admit (all), evict, demand then stream copies
                ist[I_N_MISS] += n_miss
                need = n_miss - (capacity - ist[I_OCC])
                if need > 0:
                    _evict(ist, kint, need, victims)
                n_stream = 0
                for j in range(n_miss):
                    key = missing[j]
                    if capacity - ist[I_OCC] > 0:
                        kint[key, K_STATE] = 2
                        ist[I_OCC] += 1
                        _new_copy(ist, kint, kflt, consts, fconsts, key, D_DEMAND, step, ready)
                        submit[n_submit] = key
                        n_submit += 1
                        wait[n_wait] = key
                        n_wait += 1
                        ist[I_N_DEMAND] += 1
                    else:
                        later[n_stream] = key
                        n_stream += 1
                for j in range(n_stream):
                    key = later[j]
                    _new_copy(ist, kint, kflt, consts, fconsts, key, D_STREAM, step, ready)
                    submit[n_submit] = key
                    n_submit += 1
                    wait[n_wait] = key
                    n_wait += 1
                ist[I_N_STREAM] += n_stream
            if gate != 0:  # 5. the prefetch plan, with room made
                n_plan = _plan(ist, kint, consts, la, first, n_tok, layer, wanted_keys, tally,
                               picks, plan)
                if n_plan < 0:
                    return s
                if n_plan > 0:
                    free = capacity - ist[I_OCC]
                    if n_plan > free:
                        _evict(ist, kint, n_plan - free, victims)
                        free = capacity - ist[I_OCC]
                    if free < n_plan:
                        n_plan = max(free, 0)
                    for j in range(n_plan):
                        key = plan[j]
                        kint[key, K_STATE] = 2
                        ist[I_OCC] += 1
                        _new_copy(ist, kint, kflt, consts, fconsts, key, D_PREFETCH, step, ready)
                        kint[key, K_UNUSED] = 1
                        submit[n_submit] = key
                        n_submit += 1
                    ist[I_N_PREFETCH] += n_plan
            # ---- the engine: the decision's row, the copies queued, the experts ----
            if d_s > 0:
                _row(ist, out, KIND_POLICY, clock, ready, step, layer, -1, 0,
                     consts[C_RES_DECISION], D_DECISION, n_tok)
            if n_submit > 0:  # Link.submit_all
                seq = ist[I_SEQ]
                for j in range(n_submit):
                    key = submit[j]
                    seq += 1
                    kint[key, K_SEQ] = seq
                    kint[key, K_CSTATE] = QUEUED
                    _heap_push(ist, heap_code, heap_key, (kint[key, K_PRIO] << _SEQ_BITS) | seq,
                               key)
                ist[I_SEQ] = seq
                if ist[I_RUNNING] < 0 and ist[I_KICKED] == 0:
                    _start_next(ist, fst, kint, kflt, heap_code, heap_key, consts, fconsts)
            if cwc != 0 and n_wait > 0:  # Engine._compute_while_copying
                for j in range(n_wait):
                    kint[wait[j], K_WAIT] = stamp
                t = ready
                n_later = 0
                for j in range(n_ex):
                    key = keys[j]
                    if kint[key, K_WAIT] == stamp:
                        later[n_later] = j
                        n_later += 1
                        continue
                    dt = gpu_s[tok[j]]
                    _row(ist, out, KIND_COMPUTE, t, t + dt, step, layer, ex[j], 0,
                         RES_GPU, how[j], tok[j])
                    t += dt
                for i in range(n_later):
                    j = later[i]
                    key = keys[j]
                    if kint[key, K_CSTATE] != DONE:
                        _wait(ist, fst, kint, kflt, heap_code, heap_key, out, consts,
                              fconsts, key)
                    if kflt[key, C_END] > t:
                        resume = kflt[key, C_END] + sync_s
                        _row(ist, out, KIND_STALL, t, resume, step, layer, -1, 0,
                             RES_GPU, D_WAIT, 0)
                        t = resume
                    dt = gpu_s[tok[j]]
                    _row(ist, out, KIND_COMPUTE, t, t + dt, step, layer, ex[j], 0,
                         RES_GPU, how[j], tok[j])
                    t += dt
                end = t
            else:  # the usual case: every expert once its copies landed
                waited = False
                for j in range(n_wait):
                    key = wait[j]
                    if kint[key, K_CSTATE] != DONE:
                        waited = True
                        _wait(ist, fst, kint, kflt, heap_code, heap_key, out, consts,
                              fconsts, key)
                if waited and fst[F_NOW] > ready:
                    resume = fst[F_NOW] + sync_s
                    _row(ist, out, KIND_STALL, ready, resume, step, layer, -1, 0,
                         RES_GPU, D_WAIT, 0)
                    ready = resume
                end = ready
                for j in range(n_ex):
                    dt = gpu_s[tok[j]]
                    _row(ist, out, KIND_COMPUTE, end, end + dt, step, layer, ex[j], 0,
                         RES_GPU, how[j], tok[j])
                    end += dt
            if ist[I_ERR] != ERR_NONE:
                return s
            if layer + 1 < n_layers:
                _row(ist, out, KIND_COMPUTE, end, end + o_s, step, layer + 1, -1, 0,
                     RES_GPU, D_OTHER, n_tok)
                end += o_s
            clock = end
        _row(ist, out, KIND_STEP, step_start, clock, step, -1, -1, 0, RES_NONE,
             D_STEP, n_tok)
        fst[F_CLOCK] = clock
        s += 1
        if consts[C_FOLD_ROWS] > 0 and consts[C_BUF_ROWS] + ist[I_OUT_N] > consts[C_FOLD_ROWS]:
            return s
    return s


@jit
def finish(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts
           ):  # pragma: no cover - compiled
    """The run's end (Engine._main's last lines): the link brought to the clock (copies landing
    by then land), the slot copies still in flight abandoned (slots freed, in the order they
    started), each cancelled (a running one logs the bytes that crossed), the link drained."""
    n_keys = kint.shape[0]
    n_experts = consts[C_EXPERTS]
    clock = fst[F_CLOCK]
    # Link.sync(clock)
    _advance(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts, clock)
    if ist[I_ERR] != ERR_NONE:
        return
    if fst[F_NOW] < clock:
        fst[F_NOW] = clock
    n_left = 0
    for key in range(n_keys):
        if kint[key, K_STATE] == 2:
            n_left += 1
    left = np.empty(n_left, dtype=np.int64)
    seqs = np.empty(n_left, dtype=np.int64)
    n = 0
    for key in range(n_keys):
        if kint[key, K_STATE] == 2:
            left[n] = key
            seqs[n] = kint[key, K_SEQ]
            n += 1
    order = np.argsort(seqs)
    for key in left:
        kint[key, K_STATE] = 0
        ist[I_OCC] -= 1
    nbytes = consts[C_EXPERT_BYTES]
    for i in range(n_left):
        key = left[order[i]]
        now = fst[F_NOW]
        cstate = kint[key, K_CSTATE]
        if cstate == QUEUED or cstate == NEW:
            kint[key, K_CSTATE] = CANCELLED
            n = _row(ist, out, KIND_COPY, now, now, kint[key, K_STEP],
                     key // n_experts, key % n_experts, 0, RES_LINK, D_CANCELLED, 0)
            kint[key, K_ROW] = consts[C_ROW0] + n
        elif cstate == RUNNING:  # Link._stop_running, then a kick
            start, bw = kflt[key, C_START], kflt[key, C_BW]
            if bw == 0.0:
                bw = fconsts[CF_BYTES_PER_S]
            first = start if start <= now else now
            part = (now - first - fst[F_CUR_LATENCY]) * bw
            if part < 0.0:
                part = 0.0
            moved = nbytes if nbytes < part else np.int64(part)
            kint[key, K_CSTATE] = CANCELLED
            n = _row(ist, out, KIND_COPY, first, now, kint[key, K_STEP],
                     key // n_experts, key % n_experts, moved, RES_LINK, D_CANCELLED, 0)
            kint[key, K_ROW] = consts[C_ROW0] + n
            ist[I_RUNNING] = -1
            fst[F_LAST_END] = -1.0
            fst[F_NEXT] = _INF
            ist[I_DUE] = DUE_NONE
            if ist[I_KICKED] == 0:
                ist[I_KICKED] = 1
                fst[F_NEXT] = now
                ist[I_DUE] = DUE_KICK
    _drain(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts)


@jit
def _drain(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts
           ):  # pragma: no cover - compiled
    """Link.drain: every pending event."""
    while fst[F_NEXT] != _INF and ist[I_ERR] == ERR_NONE:
        _fire(ist, fst, kint, kflt, heap_code, heap_key, out, consts, fconsts)
