"""Numba kernel of Belady's MIN: rank every future-use suffix in lexicographic order."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def future_ranks(times, keys, following, n_keys):  # pragma: no cover
    """Rank of each access event's future, so that comparing ranks compares futures.

    Events are in time order (``times`` ascending). The future of event ``i`` is the sequence of
    its key's access times from ``times[i]`` on; ``following[i]`` is the index of the key's next
    event (-1 if none). Futures are ordered lexicographically with an exhausted sequence counting
    as +infinity (and, between exhausted ones, the lower key as later): a higher rank is a
    later future. Built backwards in time: a future starting at ``t`` precedes every future
    starting after ``t``, and futures starting together are ordered by their tails.
    """
    n = times.shape[0]
    rank = np.empty(n, dtype=np.int64)
    counter = n
    i = n - 1
    order = np.empty(n_keys + 1, dtype=np.int64)
    tails = np.empty(n_keys + 1, dtype=np.int64)
    while i >= 0:
        j = i
        while j >= 0 and times[j] == times[i]:
            j -= 1
        size = i - j  # events j+1 .. i share this time
        for g in range(size):
            event = j + 1 + g
            nxt = following[event]
            tail = rank[nxt] if nxt >= 0 else n + 1 + (n_keys - keys[event])
            # insertion sort by tail, descending
            position = g
            while position > 0 and tails[position - 1] < tail:
                tails[position] = tails[position - 1]
                order[position] = order[position - 1]
                position -= 1
            tails[position] = tail
            order[position] = event
        for g in range(size):
            rank[order[g]] = counter
            counter -= 1
        i = j
    return rank
