"""Timings of the executor's own code paths (used when :mod:`hw.replay` imports: ``source``
``auto`` or ``executor``), so the calibrated tables describe what the executor runs.

- :func:`expert_seconds`: one routed expert as the executor computes it: the token gather
  ``x[idx]`` and :func:`hw.store.expert_ffn` on one flat expert buffer (its compute events span
  exactly this);
- :func:`replay_layer_seconds`: one MoE block of the replay model without its experts;
- :func:`executor_layer_other`: one layer's non-expert time as the executor logs it, plus its
  host time outside compute and stalls, against the batch (short replays).

The simulator's ``layer_other`` is one MoE layer's non-expert work. The executor's replay model
computes it its own way (per-request attention over each request's KV cache, RoPE, separate
q/k/v projections, the router), so when :mod:`hw.replay` is importable the calibration times a
one-block replay model's step with the routed experts left out: embedding, norms, attention over
``context`` cached positions, router, final norm. That is what one MoE layer of the executor
costs besides its experts (plus a small per-step share: embedding and final norm).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from moe_offload_lab.hw.calibrate.devices import median_s
from moe_offload_lab.traces.spec import ModelSpec


class _NoExperts:
    """An executor stand-in whose MoE layers return zeros (no expert work, no event log)."""

    def begin_step(self, *args: object, **kwargs: object) -> None:
        """Nothing to prepare."""

    def end_step(self) -> None:
        """Nothing to finish."""

    def log_other(self, *args: object) -> None:
        """No event log."""

    def moe_layer(self, layer: int, x: torch.Tensor, *args: object) -> torch.Tensor:
        """Zeros [B, H]: the routed experts are not part of the non-expert time."""
        return torch.zeros_like(x)


@torch.no_grad()
def expert_seconds(spec: ModelSpec, tokens: list[int], device: torch.device, dtype: torch.dtype,
                   repeats: int, warmup: int = 1, batch_rows: int | None = None) -> list[float]:
    """Median seconds of one expert over each token count, the executor's way: gather the
    tokens' rows from a batch, then :func:`hw.store.expert_ffn` on a flat buffer ``[P]``."""
    from moe_offload_lab.hw.store import expert_ffn, expert_numel

    h, i, m = spec.hidden_size, spec.expert_intermediate_size, spec.expert_matrices
    buf = torch.randn(expert_numel(spec), dtype=dtype, device=device) * h**-0.5  # [P]
    out = []
    for n in tokens:
        rows = max(n, batch_rows or n)
        x = torch.randn(rows, h, dtype=dtype, device=device)  # [B, H]
        idx = torch.arange(n, device=device)  # [n]
        out.append(median_s(lambda x=x, idx=idx: expert_ffn(x[idx], buf, h, i, m), device,
                            repeats, warmup))
    return out


def available() -> bool:
    """Whether the executor's replay model can be imported here."""
    try:
        import moe_offload_lab.hw.replay  # noqa: F401
    except ImportError:
        return False
    return True


def _block_seconds(spec: ModelSpec, blocks: int, batches: list[int], contexts: list[int],
                   device: torch.device, repeats: int, warmup: int,
                   seed: int) -> list[list[float]]:
    """Median seconds of a ``blocks``-block replay model's step without experts."""
    from moe_offload_lab.hw.device import Device
    from moe_offload_lab.hw.replay import ReplayModel

    cut = spec.with_overrides(num_layers=blocks, first_k_dense=0, moe_layer_step=1)
    dev = Device(device.type)
    model = ReplayModel(cut, dev, seed=seed)
    heads_kv, head_dim = model.n_kv, model.head_dim
    executor = _NoExperts()
    table = []
    for b in batches:
        row = []
        for c in contexts:
            rows = np.arange(b)  # [B]
            trace = SimpleNamespace(
                request_id=np.arange(b, dtype=np.int32), position=np.full(b, c, dtype=np.int32),
                phase=np.ones(b, dtype=np.int8),
                expert_ids=np.zeros((b, blocks, cut.top_k), dtype=np.int16),
                gate_weights=np.full((b, blocks, cut.top_k), 1.0 / cut.top_k, dtype=np.float32),
                lookahead={})
            cache = {r: (torch.randn(c, heads_kv, head_dim, dtype=dev.dtype,
                                     device=dev.torch_device),
                         torch.randn(c, heads_kv, head_dim, dtype=dev.dtype,
                                     device=dev.torch_device)) for r in range(b)}

            def call(rows=rows, trace=trace, cache=cache) -> None:  # noqa: ANN001
                kv = [dict(cache) for _ in range(blocks)]  # appended copies: context stays c
                model.step(executor, 0, rows, trace, kv)

            row.append(median_s(call, device, repeats, warmup))
        table.append(row)
    return table


@torch.no_grad()
def replay_layer_seconds(spec: ModelSpec, batches: list[int], contexts: list[int],
                         device: torch.device, repeats: int, warmup: int = 1,
                         seed: int = 0) -> list[list[float]]:
    """Seconds of one MoE block of the replay model, per ``[batch][context]``: a two-block
    step minus a one-block step, so the step's fixed work (embedding, final norm, the trace's
    bookkeeping) is left out (:func:`executor_overhead_s` covers it). Where noise makes the
    difference implausible (below a quarter of the one-block step), half the one-block step."""
    one = _block_seconds(spec, 1, batches, contexts, device, repeats, warmup, seed)
    two = _block_seconds(spec, 2, batches, contexts, device, repeats, warmup, seed)
    return [[d if (d := t2 - t1) >= 0.25 * t1 else 0.5 * t1 for t1, t2 in zip(r1, r2,
                                                                             strict=True)]
            for r1, r2 in zip(one, two, strict=True)]


def _cut(spec: ModelSpec) -> ModelSpec:
    """The model cut to its first two MoE layers (a per-layer figure; a small expert store)."""
    return spec.with_overrides(num_layers=min(spec.num_layers, spec.first_k_dense
                                              + 2 * spec.moe_layer_step))


def _batch_trace(spec: ModelSpec, batch: int, decode: int, seed: int):  # noqa: ANN202
    """Two static batches of ``batch`` requests: 4 prompt tokens, ``decode`` decode tokens."""
    from moe_offload_lab.hw.calibrate.policy_cost import spec_overrides
    from moe_offload_lab.traces.synthetic import LengthDist, SynthConfig, generate

    synth = SynthConfig(model=spec.name, name=f"{spec.name}-layer-other",
                        model_overrides=spec_overrides(spec), requests=2 * batch,
                        prompt_tokens=LengthDist(kind="fixed", mean=4, min=1, max=4),
                        decode_tokens=LengthDist(kind="fixed", mean=decode, min=1, max=decode))
    return generate(synth, requests=2 * batch, seed=seed)


def executor_layer_other(spec: ModelSpec, batches: list[int], device: torch.device,
                         policy: str | None, decode: int = 12, fraction: float = 0.5,
                         seed: int = 1) -> dict[str, list[float]]:
    """One MoE layer's non-expert time in the executor against the batch (decode steps),
    measured in short replays (the model cut to two MoE layers, ``policy`` with a cache of
    ``fraction`` of the experts, or every expert resident when ``policy`` is None):

    - ``other_s``: the median of the executor's own non-expert events (attention, norms,
      router...) over full decode steps;
    - ``overhead_s``: the executor's host time per layer outside compute and stalls (its
      bookkeeping between events, the policy's calls, the step's fixed work), the median over
      those steps of (latency minus compute and stalls) divided by the MoE layers.

    Their sum is the simulator's ``layer_other`` of the executor at that batch.
    """
    from moe_offload_lab.hw.replay import build_assets, release_memory, run_replay
    from moe_offload_lab.sim.metrics import BREAKDOWN

    cut = _cut(spec)
    assets = build_assets(cut, device.type, seed)  # one expert store and model for every replay
    slots = max(cut.top_k, int(fraction * cut.num_expert_keys))
    covered = [name for name in BREAKDOWN if name != "policy_s"]  # policy calls block the host
    other_s, overhead_s = [], []
    for i, b in enumerate(batches):
        trace = _batch_trace(cut, b, decode, seed)
        kwargs = {"resident_all": True} if policy is None else {"capacity_slots": slots}
        for _ in range(2 if i == 0 else 1):  # the first run warms allocators and thread pools
            result = run_replay(cut, trace, policy, batch=b, device=device.type, seed=seed,
                                assets=assets, **kwargs)
        steps = result.steps
        full = steps[steps["tokens"] == b]
        full = full.iloc[1:] if len(full) > 1 else full  # a batch's first decode step: warm-up
        ev = result.events
        mask = (ev["kind"] == "compute") & (ev["detail"] == "other") \
            & ev["step"].isin(full["step"])
        durations = (ev["end_s"] - ev["start_s"])[mask]
        other_s.append(float(durations.median()) if len(durations) else 0.0)
        gap = (full["latency_s"] - full[covered].sum(axis=1)).clip(lower=0)  # [S]
        overhead_s.append(float(gap.median()) / cut.num_moe_layers if len(gap) else 0.0)
    del assets, result
    release_memory(device.type)
    return {"batch": list(batches), "other_s": other_s, "overhead_s": overhead_s}
