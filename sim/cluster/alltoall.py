"""Token dispatch and combine as all-to-all over NVLink inside a node and InfiniBand across.

The traffic of one layer is a ``[src, dst]`` matrix of token-expert pairs; each pair carries
``hidden_size x activation_bytes`` bytes (no per-rank deduplication of a token sent to two experts
on one rank: an upper bound of what DeepEP-style kernels send). Time = latency (the slower
link's when traffic crosses nodes) + the busiest rank's bytes over bandwidth, where a rank's
intra-node and inter-node bytes, sent and received, run on separate links in parallel.
Combine moves the same bytes back (the transposed matrix), so it takes the same time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.sim.cluster.config import ClusterSpec


@dataclass(frozen=True)
class AllToAll:
    """One exchange: seconds, bytes over links, bytes across nodes."""

    time_s: float
    bytes_total: float
    bytes_inter: float


def traffic_pairs(by_src: np.ndarray, inst: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Pairs sent from each rank to each rank: ``[src, dst]`` float.

    ``by_src`` [ranks, E] pairs per source rank, ``inst`` [ranks, E] pairs each rank computes,
    ``load`` [E] pairs per expert; each expert's pairs from a source are spread over the ranks
    computing it in proportion to their shares.
    """
    frac = inst / np.maximum(load, 1)[None, :]  # [dst, E]
    return by_src @ frac.T  # [src, dst]


def alltoall(pairs: np.ndarray, cluster: ClusterSpec, bytes_per_pair: float) -> AllToAll:
    """Time and bytes of one all-to-all with ``pairs`` [src, dst]."""
    ranks = cluster.ranks
    node = np.arange(ranks) // cluster.ranks_per_node  # [ranks]
    same = node[:, None] == node[None, :]  # [src, dst]
    off = ~np.eye(ranks, dtype=bool)
    sent = pairs * bytes_per_pair  # [src, dst]
    intra = np.where(same & off, sent, 0.0)
    inter = np.where(~same, sent, 0.0)
    nv = cluster.nvlink_gb_per_s * 1e9
    ib = cluster.ib_gb_per_s * 1e9
    per_rank = np.maximum.reduce([intra.sum(1) / nv, intra.sum(0) / nv,
                                  inter.sum(1) / ib, inter.sum(0) / ib])  # [ranks]
    bytes_intra, bytes_inter = float(intra.sum()), float(inter.sum())
    latency = 0.0
    if bytes_intra > 0:
        latency = cluster.nvlink_latency_s
    if bytes_inter > 0:
        latency = max(latency, cluster.ib_latency_s)
    return AllToAll(latency + float(per_rank.max()), bytes_intra + bytes_inter, bytes_inter)
