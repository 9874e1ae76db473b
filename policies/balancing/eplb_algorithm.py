"""DeepSeek's expert-parallel load balancer (EPLB), reimplemented with numpy.

The published algorithm (github.com/deepseek-ai/EPLB, ``eplb.rebalance_experts``) turns
per-layer expert loads into a placement of *physical* experts: every logical expert gets one or
more replicas, and every GPU holds the same number of physical experts. Two policies:

- **hierarchical** (when the node count divides the number of expert groups): (1) pack whole
  expert groups onto nodes so node loads are balanced (DeepSeek-V3's group-limited routing sends
  a token to at most a few groups, so keeping a group on one node keeps its traffic inside the
  node); (2) inside each node, give the redundant slots one at a time to the expert whose load
  per replica is highest; (3) pack the node's physical experts onto its GPUs, heaviest first onto
  the lightest GPU that still has room;
- **global** (otherwise): the same three steps with one group and one node, i.e. replicate over
  the whole cluster and pack onto GPUs.

Packing (:func:`balanced_packing`) gives every pack exactly ``n / m`` items: items in descending
weight order each go to the lightest pack that is not full (first such pack on ties). Replication
(:func:`replicate_experts`) uses the first expert of highest load per replica on ties. With these
tie rules the output equals the reference implementation (the README's worked example is a test).

Shapes: ``weight`` ``[layers, logical]``; ``phy2log`` ``[layers, physical]`` (physical expert
``p`` sits on GPU ``p // (physical / gpus)``); ``logcnt`` ``[layers, logical]`` replicas of each
logical expert.
"""

from __future__ import annotations

import numpy as np
from moe_offload_lab.traces.errors import ConfigError


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack the ``n`` items of each row of ``weight`` ``[X, n]`` into ``num_packs`` packs of
    ``n / num_packs`` items each, as evenly by weight as the greedy allows.

    Returns ``pack_index`` and ``rank_in_pack``, both ``[X, n]`` int64.
    """
    rows, items = weight.shape
    if items % num_packs:
        raise ConfigError(f"EPLB: {items} items cannot be packed evenly into {num_packs} packs")
    per_pack = items // num_packs
    if per_pack == 1:
        index = np.broadcast_to(np.arange(items, dtype=np.int64), weight.shape).copy()
        return index, np.zeros(weight.shape, dtype=np.int64)
    pack_index = np.full(weight.shape, -1, dtype=np.int64)
    rank_in_pack = np.full(weight.shape, -1, dtype=np.int64)
    order = np.argsort(-weight.astype(np.float32), axis=1, kind="stable")  # [X, n] heaviest first
    for row in range(rows):
        load = [0.0] * num_packs
        count = [0] * num_packs
        values = weight[row].tolist()
        for item in order[row].tolist():
            pack = min((p for p in range(num_packs) if count[p] < per_pack),
                       key=load.__getitem__)
            pack_index[row, item] = pack
            rank_in_pack[row, item] = count[pack]
            load[pack] += values[item]
            count[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray,
                      num_physical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each row's ``num_physical - n`` redundant replicas, one at a time, to the expert with
    the highest load per replica.

    Returns ``phy2log`` ``[X, num_physical]`` (physical ``i < n`` is logical ``i``), ``rank``
    ``[X, num_physical]`` (replica number of each physical expert) and ``logcnt`` ``[X, n]``.
    """
    rows, logical = weight.shape
    if num_physical < logical:
        raise ConfigError(f"EPLB: {num_physical} physical experts cannot hold {logical} "
                          f"logical ones")
    phy2log = np.tile(np.arange(num_physical, dtype=np.int64), (rows, 1))
    rank = np.zeros((rows, num_physical), dtype=np.int64)
    logcnt = np.ones((rows, logical), dtype=np.int64)
    row_index = np.arange(rows)
    weight = weight.astype(np.float32)
    for i in range(logical, num_physical):
        chosen = np.argmax(weight / logcnt, axis=1)  # [X] first maximum on ties
        phy2log[:, i] = chosen
        rank[:, i] = logcnt[row_index, chosen]
        logcnt[row_index, chosen] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse of permutations ``[X, n]``."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def rebalance_hierarchical(weight: np.ndarray, num_physical: int, num_groups: int,
                           num_nodes: int, num_gpus: int) -> tuple[np.ndarray, ...]:
    """The hierarchical policy (see the module docstring): ``(phy2log, phyrank, logcnt)``."""
    layers, logical = weight.shape
    checks = [(logical % num_groups == 0, f"{logical} experts in {num_groups} groups"),
              (num_groups % num_nodes == 0, f"{num_groups} groups on {num_nodes} nodes"),
              (num_gpus % num_nodes == 0, f"{num_gpus} GPUs in {num_nodes} nodes"),
              (num_physical % num_gpus == 0, f"{num_physical} physical experts on {num_gpus} "
                                             f"GPUs")]
    for ok, what in checks:
        if not ok:
            raise ConfigError(f"EPLB needs an even split: {what}")
    group_size = logical // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_physical // num_gpus
    per_node_logical = logical // num_nodes
    # 1. pack expert groups onto nodes
    group_load = weight.reshape(layers, num_groups, group_size).sum(-1)  # [L, groups]
    group_pack, group_rank = balanced_packing(group_load, num_nodes)
    first = (group_pack * groups_per_node + group_rank) * group_size  # [L, groups]
    log2mlog = (first[:, :, None] + np.arange(group_size)).reshape(layers, logical)
    mlog2log = _inverse(log2mlog)  # node-major ("meta-logical") order -> logical
    # 2. replicate inside each node
    mlog_load = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, per_node_logical)
    phy2mlog, phyrank, mlogcnt = replicate_experts(mlog_load, num_physical // num_nodes)
    # 3. pack each node's physical experts onto its GPUs
    phy_load = np.take_along_axis(mlog_load / mlogcnt, phy2mlog, axis=1)  # [L * nodes, P/nodes]
    pack, rank_in_pack = balanced_packing(phy_load, num_gpus // num_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank_in_pack)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)  # [L * nodes, P/nodes]
    node_offset = np.arange(0, logical, per_node_logical)[None, :, None]  # [1, nodes, 1]
    pphy2mlog = (pphy2mlog.reshape(layers, num_nodes, -1) + node_offset).reshape(layers, -1)
    phy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)  # [L, P]
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=1).reshape(layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(layers, -1), log2mlog, axis=1)
    return phy2log, pphyrank, logcnt


def rebalance_experts(weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's entry point: ``(phy2log [L, P], log2phy [L, n, max replicas] (-1 pads),
    logcnt [L, n])``; hierarchical when ``num_nodes`` divides ``num_groups``, else global."""
    weight = np.asarray(weight, dtype=np.float32)
    layers, logical = weight.shape
    if num_groups % num_nodes == 0:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_physical, num_groups,
                                                          num_nodes, num_gpus)
    else:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_physical, 1, 1, num_gpus)
    width = int(logcnt.max())
    log2phy = np.full((layers, logical * width), -1, dtype=np.int64)
    np.put_along_axis(log2phy, phy2log * width + phyrank,
                      np.broadcast_to(np.arange(num_physical), phy2log.shape), axis=1)
    return phy2log, log2phy.reshape(layers, logical, width), logcnt
