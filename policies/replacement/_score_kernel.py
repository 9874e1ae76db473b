"""Numba kernel of the frequency x layer-distance rule: the m lowest-priority residents."""

from __future__ import annotations

import numba


@numba.njit(cache=True)
def lowest(counts, keys, n_keys, weights, layer_of, m, out_keys, out_priority
           ):  # pragma: no cover
    """Fill ``out_keys[:n]`` with the ``m`` keys of ``keys[:n_keys]`` of lowest
    ``count * weight[layer]``, ascending (ties: lower key first); return ``n``.

    counts [L*E] float64, keys [>= n_keys] int64, weights [L] float64, layer_of [L*E] int64
    (the layer of each key, to avoid a division per key), out_* [>= m].
    """
    filled = 0
    for i in range(n_keys):
        key = keys[i]
        p = counts[key] * weights[layer_of[key]]
        if filled == m and (p > out_priority[m - 1] or
                            (p == out_priority[m - 1] and key > out_keys[m - 1])):
            continue
        position = filled if filled < m else m - 1
        while position > 0 and (out_priority[position - 1] > p or (
                out_priority[position - 1] == p and out_keys[position - 1] > key)):
            if position < m:
                out_priority[position] = out_priority[position - 1]
                out_keys[position] = out_keys[position - 1]
            position -= 1
        out_priority[position] = p
        out_keys[position] = key
        if filled < m:
            filled += 1
    return filled
