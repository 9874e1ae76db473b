"""Replay mode: a decoder stack of a ModelSpec's shapes whose routing is forced from a trace.

:class:`ReplayModel` builds random (seeded) weights with the spec's real shapes, or a scaled-down
copy (``spec.with_overrides(num_layers=..., hidden_size=...)``): per block RMSNorm, attention with a
KV cache per request (GQA, RoPE optional), then for MoE blocks a router (computed, its answer not
used: the routing comes from the trace), shared experts (resident) and the routed experts through
the :class:`~hw.executor.OffloadExecutor`; dense blocks (``first_k_dense``, ``moe_layer_step``)
run a resident SwiGLU FFN. Tokens enter as rows of a seeded embedding table picked from (request,
position). bfloat16 on CUDA, float32 on the CPU twin.

:func:`run_replay` runs a trace's schedule (:func:`sim.workload.static_batches`) and returns a
:class:`ReplayResult`: the event log frame, the step frame, a summary like ``sim.run``'s and the
final hidden states, so a run under a policy can be checked against the all-resident run.

:func:`build_assets` builds the expert store and the model once (:class:`ReplayAssets`); passing
them as ``run_replay(..., assets=...)`` lets many runs of one spec share them (a validation matrix:
the host store of Mixtral-8x7B cut to 2 layers is 5.6 GB, pinned on CUDA). A run only reads them:
the KV caches, slots, scratch buffers, streams and event log are its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from moe_offload_lab.hw.device import Device
from moe_offload_lab.hw.executor import OffloadExecutor
from moe_offload_lab.hw.slots import slots_for
from moe_offload_lab.hw.store import ExpertStore, expert_ffn
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.hardware import HardwareProfile, load_hardware
from moe_offload_lab.sim.metrics import latency_metrics, step_frame, summarize
from moe_offload_lab.sim.workload import static_batches
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

DEFAULT_HARDWARE = "h100-sxm"  # the cost model handed to policies and the memory plan's card
_ROUTING_FIELDS = ("num_moe_layers", "num_experts", "top_k")
_EMBED_ROWS = 1024  # embedding table rows (tokens are picked from request and position)


@dataclass
class ReplayResult:
    """One replay run."""

    events: pd.DataFrame  # the sim.eventlog schema
    steps: pd.DataFrame  # sim.metrics.step_frame(events)
    summary: dict[str, Any]  # like sim.run's: summarize + latency_metrics + sim_wall_s + run info
    hidden: torch.Tensor  # [R, H] float32 on the host: final hidden state of each row run
    rows: np.ndarray  # [R] the trace rows of ``hidden``, in schedule order
    schedule: list[np.ndarray] = field(default_factory=list)  # trace rows of each step
    capacity_slots: int = 0
    stats: dict[str, int] = field(default_factory=dict)  # executor counters


def _heads(spec: ModelSpec) -> tuple[int, int, int]:
    """(query heads, kv heads, head dim) from the spec, with fallbacks for specs without them."""
    n_heads = spec.num_attention_heads or max(1, spec.hidden_size // 64)
    n_kv = spec.num_kv_heads or n_heads
    if n_heads % n_kv:
        raise ConfigError(f"model {spec.name!r}: {n_heads} attention heads are not a multiple of "
                          f"{n_kv} kv heads")
    head_dim = spec.head_dim or max(1, spec.hidden_size // n_heads)
    return n_heads, n_kv, head_dim


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last axis: [T, H] -> [T, H]."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary embedding (rotate-half) of ``x`` [T, heads, d] at ``positions`` [T]."""
    d = x.shape[-1]
    half = d // 2
    if half == 0:
        return x
    inv = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)  # [d/2]
    angle = positions.to(torch.float32)[:, None] * inv[None, :]  # [T, d/2]
    cos = angle.cos()[:, None, :].to(x.dtype)  # [T, 1, d/2]
    sin = angle.sin()[:, None, :].to(x.dtype)  # [T, 1, d/2]
    x1, x2 = x[..., :half], x[..., half:2 * half]
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # [T, heads, 2*half]
    return torch.cat((rotated, x[..., 2 * half:]), dim=-1) if d % 2 else rotated


class ReplayModel:
    """Random-weight decoder of ``spec``'s shapes (see module docstring)."""

    def __init__(self, spec: ModelSpec, device: Device, seed: int = 0, rope: bool = True) -> None:
        self.spec, self.device, self.rope = spec, device, rope
        self.n_heads, self.n_kv, self.head_dim = _heads(spec)
        hidden = spec.hidden_size
        gen = torch.Generator().manual_seed(seed + 1_000_003)  # not the expert store's stream

        def rand(*shape: int, fan_in: int) -> torch.Tensor:
            w = torch.randn(*shape, generator=gen) * fan_in ** -0.5
            return w.to(device=device.torch_device, dtype=device.dtype)

        ones = torch.ones(hidden, dtype=device.dtype, device=device.torch_device)  # [H]
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.moe_index = {b: i for i, b in enumerate(spec.moe_layer_indices)}
        self.blocks: list[dict[str, Any]] = []
        for b in range(spec.num_layers):
            block: dict[str, Any] = {
                "attn_norm": ones, "ffn_norm": ones,
                "wq": rand(q_dim, hidden, fan_in=hidden),  # [nh*d, H]
                "wk": rand(kv_dim, hidden, fan_in=hidden),  # [nkv*d, H]
                "wv": rand(kv_dim, hidden, fan_in=hidden),  # [nkv*d, H]
                "wo": rand(hidden, q_dim, fan_in=q_dim),  # [H, nh*d]
            }
            if b in self.moe_index:
                block["router"] = rand(spec.num_experts, hidden, fan_in=hidden)  # [E, H]
                shared = spec.num_shared_experts * spec.shared_intermediate_size
                if shared:
                    block["shared"] = (self._ffn_buffer(rand, shared), shared)
            else:
                inter = spec.dense_intermediate_size or spec.expert_intermediate_size
                block["dense"] = (self._ffn_buffer(rand, inter), inter)
            self.blocks.append(block)
        self.embed = rand(_EMBED_ROWS, hidden, fan_in=1)  # [V, H]
        self.final_norm = ones

    def _ffn_buffer(self, rand: Any, inter: int) -> torch.Tensor:
        """A resident gated FFN as one flat buffer (gate, up, down): [3 * H * inter]."""
        hidden = self.spec.hidden_size
        return torch.cat([rand(inter * hidden, fan_in=hidden), rand(inter * hidden, fan_in=hidden),
                          rand(hidden * inter, fan_in=inter)])

    def _attention(self, block: dict[str, Any], x: torch.Tensor, requests: np.ndarray,
                   positions: torch.Tensor, kv: dict[int, tuple[torch.Tensor, torch.Tensor]]
                   ) -> torch.Tensor:
        """Causal GQA attention of ``x`` [T, H] against each request's KV cache (appended)."""
        n_tok = x.shape[0]
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        q = torch.nn.functional.linear(x, block["wq"]).view(n_tok, nh, d)  # [T, nh, d]
        k = torch.nn.functional.linear(x, block["wk"]).view(n_tok, nkv, d)  # [T, nkv, d]
        v = torch.nn.functional.linear(x, block["wv"]).view(n_tok, nkv, d)  # [T, nkv, d]
        if self.rope:
            q, k = _rope(q, positions), _rope(k, positions)
        out = torch.empty(n_tok, nh * d, dtype=x.dtype, device=x.device)  # [T, nh*d]
        for r in dict.fromkeys(requests.tolist()):  # requests in order of first appearance
            idx_np = np.nonzero(requests == r)[0]
            idx = torch.from_numpy(idx_np).to(x.device)
            past = kv.get(r)
            kc = k[idx] if past is None else torch.cat((past[0], k[idx]))  # [S, nkv, d]
            vc = v[idx] if past is None else torch.cat((past[1], v[idx]))  # [S, nkv, d]
            kv[r] = (kc, vc)
            n, s = len(idx_np), kc.shape[0]
            qh = q[idx].transpose(0, 1)  # [nh, n, d]
            kh = kc.transpose(0, 1).repeat_interleave(nh // nkv, dim=0)  # [nh, S, d]
            vh = vc.transpose(0, 1).repeat_interleave(nh // nkv, dim=0)  # [nh, S, d]
            mask = (torch.arange(s, device=x.device)[None, :]
                    <= (s - n + torch.arange(n, device=x.device))[:, None])  # [n, S]
            o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
            out[idx] = o.transpose(0, 1).reshape(n, nh * d)  # [n, nh*d]
        return torch.nn.functional.linear(out, block["wo"])  # [T, H]

    def step(self, executor: OffloadExecutor, step: int, rows: np.ndarray, trace: Trace,
             kv: list[dict[int, tuple[torch.Tensor, torch.Tensor]]]) -> torch.Tensor:
        """Run one step (the trace ``rows`` [B]) through every block; returns [B, H].

        Events are recorded on the executor's device (its run's streams and clock: a model is
        shared by runs through :class:`ReplayAssets`); stand-in executors without one use the
        model's. The model itself is only read; ``kv`` is the run's.
        """
        spec = self.spec
        dev = getattr(executor, "device", None) or self.device
        requests = np.asarray(trace.request_id[rows])  # [B]
        positions_np = np.asarray(trace.position[rows], dtype=np.int64)  # [B]
        positions = torch.from_numpy(positions_np).to(dev.torch_device)  # [B]
        ids = np.asarray(trace.expert_ids[rows])  # [B, L, k]
        gates = np.asarray(trace.gate_weights[rows], dtype=np.float32)  # [B, L, k]
        ahead = {d: np.asarray(cols[rows]) for d, cols in trace.lookahead.items()}  # [B, L, k]
        token = torch.from_numpy((requests.astype(np.int64) * 7919 + positions_np)
                                 % _EMBED_ROWS).to(dev.torch_device)  # [B]
        executor.begin_step(step, requests, np.asarray(trace.phase[rows]), rows)
        x = self.embed[token]  # [B, H]
        hidden, matrices = spec.hidden_size, 3  # resident FFNs are gated
        other_start = dev.compute.record()
        for b, block in enumerate(self.blocks):
            h = x + self._attention(block, _rms_norm(x, block["attn_norm"]), requests, positions,
                                    kv[b])  # [B, H]
            hn = _rms_norm(h, block["ffn_norm"])  # [B, H]
            if b in self.moe_index:
                layer = self.moe_index[b]
                torch.nn.functional.linear(hn, block["router"])  # [B, E] routing forced instead
                shared = None
                if "shared" in block:
                    buf, inter = block["shared"]
                    shared = expert_ffn(hn, buf, hidden, inter, matrices)  # [B, H]
                executor.log_other(layer, other_start, dev.compute.record())
                la = {d: cols[:, layer] for d, cols in ahead.items()}  # {d: [B, k]}
                routed = executor.moe_layer(layer, hn, ids[:, layer], gates[:, layer], la)
                x = h + routed if shared is None else h + (routed + shared)
                other_start = dev.compute.record()
            else:
                buf, inter = block["dense"]
                x = h + expert_ffn(hn, buf, hidden, inter, matrices)
        out = _rms_norm(x, self.final_norm)  # [B, H]
        executor.end_step()
        return out


@dataclass(frozen=True, eq=False)
class ReplayAssets:
    """The expert store and the model of one (spec, device, seed, rope), built once by
    :func:`build_assets` and shared by any number of :func:`run_replay` calls (read only)."""

    spec: ModelSpec
    device: str  # "cpu" (the CPU twin) or "cuda"
    dtype: torch.dtype
    seed: int
    rope: bool
    store: ExpertStore
    model: ReplayModel

    def mismatches(self, spec: ModelSpec, device: str, seed: int, rope: bool = True,
                   dtype: torch.dtype | None = None) -> list[str]:
        """What differs from a run of ``spec`` on ``device`` with ``seed`` and ``rope``."""
        wrong = []
        if spec != self.spec:
            mine, theirs = spec.to_dict(), self.spec.to_dict()
            fields = [f"{k}: {v!r} != {theirs.get(k)!r}" for k, v in mine.items()
                      if theirs.get(k) != v] or ["fields differ"]
            wrong.append(f"spec {spec.name!r} ({'; '.join(fields)})")
        if device != self.device:
            wrong.append(f"device {device!r} != {self.device!r}")
        if dtype is not None and dtype != self.dtype:
            wrong.append(f"dtype {dtype} != {self.dtype}")
        if seed != self.seed:
            wrong.append(f"seed {seed} != {self.seed}")
        if rope != self.rope:
            wrong.append(f"rope {rope} != {self.rope}")
        return wrong

    def matches(self, spec: ModelSpec, device: str, seed: int, rope: bool = True) -> bool:
        """Whether a run of ``spec`` on ``device`` with ``seed`` and ``rope`` can use these."""
        return not self.mismatches(spec, device, seed, rope)

    def check(self, spec: ModelSpec, device: str, seed: int, rope: bool = True,
              dtype: torch.dtype | None = None) -> None:
        """ConfigError unless these assets are the ones such a run would build."""
        wrong = self.mismatches(spec, device, seed, rope, dtype)
        if wrong:
            raise ConfigError(f"replay assets of {self.spec.name!r} (device {self.device}, seed "
                              f"{self.seed}) do not fit this run: {'; '.join(wrong)}")


def build_assets(spec: ModelSpec, device: str = "cpu", seed: int = 0,
                 rope: bool = True) -> ReplayAssets:
    """The expert store and the model :func:`run_replay` would build for these arguments."""
    dev = Device(device)
    store = ExpertStore(spec, dev, seed=seed)
    model = ReplayModel(spec, dev, seed=seed, rope=rope)
    return ReplayAssets(spec, device, dev.dtype, seed, rope, store, model)


def release_memory(device: str = "cpu") -> None:
    """Hand cached memory back after dropping assets: the CUDA caching allocator's blocks and
    the pinned host blocks (no-op on the CPU twin)."""
    import gc

    gc.collect()
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        empty_host = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        if empty_host is not None:  # torch >= 2.9 (older: pinned blocks stay cached)
            empty_host()


def _hardware(hardware: str | HardwareProfile) -> HardwareProfile:
    return hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)


def check_trace(spec: ModelSpec, trace: Trace) -> None:
    """ConfigError unless the trace's routing shape fits the model (MoE layers, experts, top-k).

    Other fields may differ, so a scaled-down model (smaller hidden size) can replay a real trace.
    """
    wrong = [f"{f}: {getattr(spec, f)} != {getattr(trace.spec, f)}" for f in _ROUTING_FIELDS
             if getattr(spec, f) != getattr(trace.spec, f)]
    if wrong:
        raise ConfigError(f"trace of {trace.spec.name!r} does not fit model {spec.name!r} "
                          f"({'; '.join(wrong)})")


def run_replay(spec: ModelSpec, trace: Trace, policy: Policy | str | Mapping[str, Any] | None,
               capacity_slots: int | None = None, gpu_memory_gb: float | None = None,
               batch: int = 1, device: str = "cpu", prefill: bool = True, seed: int = 0,
               resident_all: bool = False, *, hardware: str | HardwareProfile = DEFAULT_HARDWARE,
               rope: bool = True, twin_copies_per_layer: int | None = None,
               cpu_threads: int = 2, check: bool = False,
               assets: ReplayAssets | None = None) -> ReplayResult:
    """Replay ``trace`` on a random-weight model of ``spec`` with ``policy`` (a Policy, a bundled
    name or a config mapping) and a cache of ``capacity_slots`` slots or ``gpu_memory_gb`` GB.

    ``resident_all``: every expert on the device and no policy (the reference; ``policy`` and the
    cache size are ignored). ``hardware``: the profile whose cost model policies plan with and
    whose memory bounds the budget (as in the simulator). ``twin_copies_per_layer``: CPU twin only,
    how many queued copies finish while a layer computes (None: all). ``check``: assert the
    executor's cache invariants at every layer (tests). ``assets``: the store and model from
    :func:`build_assets` of the same spec, device, seed and rope (ConfigError otherwise) instead
    of building new ones; the outputs are the same.
    """
    check_trace(spec, trace)
    profile = _hardware(hardware)
    schedule = static_batches(trace, batch, prefill=prefill)
    if not schedule:
        raise ConfigError(f"nothing to replay: the trace's {trace.num_tokens} tokens are all "
                          f"prompt tokens and prefill is false")
    if resident_all:
        pol, capacity = None, spec.num_expert_keys
    else:
        if policy is None:
            raise ConfigError("a policy is needed unless resident_all is set")
        pol = policy if isinstance(policy, Policy) else build_policy(policy)
        capacity = slots_for(spec, profile, capacity_slots, gpu_memory_gb)
    dev = Device(device, twin_copies_per_layer=twin_copies_per_layer)
    torch.manual_seed(seed)
    if assets is None:
        store = ExpertStore(spec, dev, seed=seed)
        model = ReplayModel(spec, dev, seed=seed, rope=rope)
    else:
        assets.check(spec, device, seed, rope, dev.dtype)
        store, model = assets.store, assets.model
    cost = ComputeModel(spec, profile).cost_model()
    executor = OffloadExecutor(spec, store, dev, pol, capacity, cost, trace=trace,
                               schedule=schedule, cpu_threads=cpu_threads, check=check)
    kv: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in range(spec.num_layers)]
    outputs: list[torch.Tensor] = []
    wall = time.perf_counter()
    with torch.inference_mode():
        for step, rows in enumerate(schedule):
            outputs.append(model.step(executor, step, rows, trace, kv))
        events = executor.finish()
    wall_s = time.perf_counter() - wall
    steps = step_frame(events)
    hidden = torch.cat(outputs).to(device="cpu", dtype=torch.float32)  # [R, H]
    summary = {
        "mode": "replay", "model": spec.name, "policy": pol.name if pol else "all-resident",
        "device": dev.name, "dtype": str(dev.dtype).replace("torch.", ""),
        "capacity_slots": capacity, "cache_bytes": capacity * store.bytes_per_expert,
        "expert_bytes": store.bytes_per_expert, "pinned": store.pinned, "batch": batch,
        "hardware": profile.name, "resident_all": resident_all,
        **summarize(events),
        "workload": "static",
        **latency_metrics(steps, schedule, trace.request_id, trace.phase),
        "events": len(events), "sim_wall_s": wall_s, **{f"hw_{k}": v
                                                        for k, v in executor.stats.items()},
    }
    return ReplayResult(events, steps, summary, hidden, np.concatenate(schedule), schedule,
                        capacity, dict(executor.stats))
