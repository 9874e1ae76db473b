"""LiveRunner and run_live: a Hugging Face MoE model offloading its routed experts.

:class:`LiveRunner` swaps every MoE block for an :class:`~hw.live.block.OffloadMoeBlock`
and frames each forward call of the whole model as one executor step: a forward pre-hook opens
the step, the first MoE block of the call runs ``begin_step`` (the token count is known there),
every MoE block runs ``moe_layer`` for its layer, and a forward hook runs ``end_step`` after the
last one, the same policy call order as replay mode. A forward whose KV cache is empty is a
prefill of new requests (one per batch row); one with a filled cache decodes the same requests.

:func:`run_live` loads or builds the model, runs a greedy generation through the runner and
returns a :class:`LiveResult`: the event log, the step frame, a summary like
:class:`~hw.replay.ReplayResult`'s, the logits of every forward and the generated tokens.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hw.device import Device
from hw.executor import OffloadExecutor
from hw.live.adapters import LiveArch, inspect_model
from hw.live.block import OffloadMoeBlock
from hw.live.store import LiveExpertStore
from hw.replay import DEFAULT_HARDWARE
from hw.slots import slots_for
from policies.base import Policy
from policies.config import build_policy
from sim.compute import ComputeModel
from sim.hardware import HardwareProfile, load_hardware
from sim.metrics import latency_metrics, step_frame, summarize
from traces.errors import ConfigError
from traces.format import DECODE, PREFILL
from traces.record.model_spec import spec_from_model


@dataclass
class LiveResult:
    """One live run."""

    events: pd.DataFrame  # the sim.eventlog schema
    steps: pd.DataFrame  # sim.metrics.step_frame(events)
    summary: dict[str, Any]  # like ReplayResult.summary, mode "live"
    logits: list[torch.Tensor]  # per forward call: [B, S, V] float32 on the host
    tokens: torch.Tensor  # [B, n] greedily generated token ids
    input_ids: torch.Tensor  # [B, S] the prompt
    capacity_slots: int = 0
    stats: dict[str, int] = field(default_factory=dict)  # executor counters


def load_live_model(source: Any, seed: int = 0) -> tuple[Any, str]:
    """``(model, name)`` from a model object, a tiny config name (``tiny-mixtral``...), a
    transformers config, or a local checkpoint folder; ConfigError when none of these works."""
    from traces.record.loading import load_checkpoint
    from traces.record.tiny import TINY_CONFIGS, build_model, build_tiny_model

    if isinstance(source, torch.nn.Module):
        return source, getattr(getattr(source, "config", None), "model_type", "model")
    if isinstance(source, str) and source in TINY_CONFIGS:
        return build_tiny_model(source, seed), source
    if hasattr(source, "model_type") and hasattr(source, "to_dict"):  # a transformers config
        return build_model(source, seed), str(source.model_type)
    if isinstance(source, str | Path):
        return load_checkpoint(source, device="cpu", dtype="float32"), Path(source).name
    raise ConfigError(f"cannot make a model of {type(source).__name__}: give a model, a tiny "
                      f"config name, a transformers config or a checkpoint folder")


def _hardware(hardware: str | HardwareProfile) -> HardwareProfile:
    return hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)


def _cache_empty(kwargs: Mapping[str, Any]) -> bool:
    past = kwargs.get("past_key_values")
    if past is None:
        return True
    length = getattr(past, "get_seq_length", None)
    return length is None or int(length()) == 0


class LiveRunner:
    """Installs offloading blocks and step hooks on ``model`` (see module docstring).

    ``policy``: a Policy, a bundled name or a config mapping (None with ``resident_all``: every
    expert preloaded, no policy). Give one of ``capacity_slots`` and ``gpu_memory_gb``.
    ``lookahead``: how many later MoE layers' routers are applied to each layer's input to fill
    ``ctx.lookahead`` (0: none). Call :meth:`finish` for the event log; :meth:`remove` restores
    the original blocks.
    """

    def __init__(self, model: Any, policy: Policy | str | Mapping[str, Any] | None,
                 capacity_slots: int | None = None, gpu_memory_gb: float | None = None,
                 device: str = "cpu", *, name: str | None = None, resident_all: bool = False,
                 hardware: str | HardwareProfile = DEFAULT_HARDWARE, lookahead: int = 1,
                 twin_copies_per_layer: int | None = None, cpu_threads: int = 2,
                 check: bool = False) -> None:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise ConfigError(f"live mode needs a transformers model, got {type(model).__name__}")
        self.model = model
        self.arch: LiveArch = inspect_model(model)
        self.profile = _hardware(hardware)
        self.spec = spec_from_model(model, self.arch.adapter, self.arch.blocks,
                                    self.arch.routers, name or self.arch.model_type)
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
            raise ConfigError(f"lookahead must be an integer >= 0, got {lookahead!r}")
        self.distances = lookahead
        if resident_all:
            self.policy, self.capacity = None, self.spec.num_expert_keys
        else:
            if policy is None:
                raise ConfigError("a policy is needed unless resident_all is set")
            self.policy = policy if isinstance(policy, Policy) else build_policy(policy)
            if self.policy.is_oracle:
                raise ConfigError(f"policy {self.policy.name!r} is an oracle (it reads the future "
                                  f"of a trace); live mode has no trace")
            self.capacity = slots_for(self.spec, self.profile, capacity_slots, gpu_memory_gb)
        self.device = Device(device, twin_copies_per_layer=twin_copies_per_layer)
        model.to(dtype=self.device.dtype)
        self.store = LiveExpertStore(self.spec, self.device, self.arch)
        cost = ComputeModel(self.spec, self.profile).cost_model()
        self.executor = OffloadExecutor(self.spec, self.store, self.device, self.policy,
                                        self.capacity, cost, cpu_threads=cpu_threads,
                                        check=check)
        layers = model.model.layers
        attr = self.arch.adapter.block_attr
        for layer, b in enumerate(self.arch.blocks):
            setattr(layers[b], attr, OffloadMoeBlock(self, self.arch, layer))
        model.to(self.device.torch_device)  # non-expert weights resident; experts stay host-side
        self.hooks = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                      model.register_forward_hook(self._post)]
        self.step, self.in_step, self.open = -1, False, False
        self.next_request, self.requests = 0, np.zeros(0, dtype=np.int64)
        self.phase_now = PREFILL
        self.schedule: list[np.ndarray] = []  # row numbers of each step
        self.row_request: list[np.ndarray] = []
        self.row_phase: list[np.ndarray] = []
        self.finished = False

    # ---- step framing ---------------------------------------------------------------------------
    def _pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.finished:
            raise RuntimeError("this LiveRunner has finished; build a new one")
        self.open = True
        self.phase_now = PREFILL if _cache_empty(kwargs) else DECODE

    def enter_layer(self, layer: int, shape: torch.Size) -> None:
        """An offloading block starts: the first one of a forward call begins the step."""
        if self.in_step:
            return
        if not self.open:
            raise RuntimeError("an MoE block ran outside a forward call of the whole model")
        batch, seq = int(shape[0]), int(shape[1]) if len(shape) == 3 else 1
        if self.phase_now == PREFILL:
            self.requests = np.arange(self.next_request, self.next_request + batch)
            self.next_request += batch
        elif len(self.requests) != batch:
            raise ConfigError(f"a decode call of batch {batch} follows a prefill of "
                              f"{len(self.requests)} requests")
        request_ids = np.repeat(self.requests, seq)  # [T] batch-major, as the flattened rows
        phase = np.full(len(request_ids), self.phase_now, dtype=np.int8)  # [T]
        start = sum(len(r) for r in self.schedule)
        rows = np.arange(start, start + len(request_ids))  # [T]
        self.step += 1
        self.schedule.append(rows)
        self.row_request.append(request_ids)
        self.row_phase.append(phase)
        self.executor.begin_step(self.step, request_ids, phase, rows)
        self.in_step = True
        self.other_start = self.device.compute.record()

    def _post(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        self.open = False
        if self.in_step:
            self.executor.end_step()
            self.in_step = False

    # ---- per layer ------------------------------------------------------------------------------
    def lookahead(self, layer: int, flat: torch.Tensor) -> dict[int, np.ndarray]:
        """``{d: [T, k]}``: the experts MoE layer ``layer + d``'s router picks for ``flat``."""
        out = {}
        for d in range(1, self.distances + 1):
            if layer + d < len(self.arch.routers):
                _, indices = self.arch.adapter.read_output(self.arch.routers[layer + d](flat))
                out[d] = indices.detach().to("cpu").numpy()
        return out

    def moe_layer(self, layer: int, flat: torch.Tensor, ids: np.ndarray, gates: np.ndarray,
                  lookahead: dict[int, np.ndarray]) -> torch.Tensor:
        """Log the non-expert work since the last MoE layer, run the routed experts [T, H]."""
        dev = self.device
        self.executor.log_other(layer, self.other_start, dev.compute.record())
        out = self.executor.moe_layer(layer, flat, ids, gates, lookahead)
        self.other_start = dev.compute.record()
        return out

    # ---- end ------------------------------------------------------------------------------------
    def finish(self) -> pd.DataFrame:
        """The event log frame (waits for the streams); the runner takes no more steps."""
        self.finished = True
        return self.executor.finish()

    def remove(self) -> None:
        """Put the original MoE blocks back and drop the hooks."""
        for hook in self.hooks:
            hook.remove()
        layers = self.model.model.layers
        attr = self.arch.adapter.block_attr
        for b, module in zip(self.arch.blocks, self.arch.modules, strict=True):
            setattr(layers[b], attr, module)

    def schedule_arrays(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """``(schedule, request_id per row, phase per row)`` for :func:`latency_metrics`."""
        if not self.schedule:
            empty = np.zeros(0, dtype=np.int64)
            return [], empty, empty.astype(np.int8)
        return self.schedule, np.concatenate(self.row_request), np.concatenate(self.row_phase)


def greedy_generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding with a KV cache: ``(new tokens [B, n], logits of each forward call)``.

    Call 0 is the prefill ``[B, S, V]``, then one ``[B, 1, V]`` per decode call; logits come back
    as float32 on the host. Works the same on the original and the offloading model.
    """
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    logits_all: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        for i in range(max_new_tokens):
            logits = out.logits  # [B, s, V]
            logits_all.append(logits.to("cpu", torch.float32))
            nxt = logits[:, -1].argmax(dim=-1)  # [B]
            tokens.append(nxt.to("cpu"))
            if i + 1 < max_new_tokens:
                out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values,
                            use_cache=True)
        if max_new_tokens == 0:
            logits_all.append(out.logits.to("cpu", torch.float32))
    new = torch.stack(tokens, dim=1) if tokens else torch.zeros(len(ids), 0, dtype=torch.long)
    return new, logits_all


def encode_inputs(inputs: Any, model: Any, source: Any = None) -> torch.Tensor:
    """``[B, S]`` token ids from a tensor, a list of equal-length id lists, a string or strings
    (the checkpoint's tokenizer when it has one, else UTF-8 bytes for a 256+ vocabulary)."""
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.dim() == 2 else inputs[None]
    elif isinstance(inputs, str) or (isinstance(inputs, Sequence) and inputs
                                     and all(isinstance(p, str) for p in inputs)):
        prompts = [inputs] if isinstance(inputs, str) else list(inputs)
        rows = _tokenize(prompts, model, source)
        ids = _stack(rows)
    elif isinstance(inputs, Sequence) and inputs:
        ids = _stack([list(r) for r in inputs])
    else:
        raise ConfigError("inputs must be token ids [B, S], lists of ids, a string or strings")
    vocab = int(model.config.vocab_size)
    if ids.numel() == 0 or ids.dtype.is_floating_point or int(ids.min()) < 0 \
            or int(ids.max()) >= vocab:
        raise ConfigError(f"input ids must be a non-empty integer batch in [0, {vocab})")
    return ids.long()


def _stack(rows: list[list[int]]) -> torch.Tensor:
    if len({len(r) for r in rows}) != 1 or not rows[0]:
        raise ConfigError("live mode runs prompts of equal, non-zero length (no padding)")
    return torch.tensor(rows, dtype=torch.long)


def _tokenize(prompts: list[str], model: Any, source: Any) -> list[list[int]]:
    if isinstance(source, str | Path) and Path(source).is_dir():
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
            return [tok(p)["input_ids"] for p in prompts]
        except (OSError, ValueError):
            pass
    if int(model.config.vocab_size) < 256:
        raise ConfigError("string prompts need a tokenizer or a vocabulary of 256+ (bytes)")
    return [list(p.encode("utf-8")) for p in prompts]


def run_live(source: Any, inputs: Any, policy: Policy | str | Mapping[str, Any] | None,
             capacity_slots: int | None = None, gpu_memory_gb: float | None = None,
             device: str = "cpu", max_new_tokens: int = 4, *, seed: int = 0,
             resident_all: bool = False, hardware: str | HardwareProfile = DEFAULT_HARDWARE,
             lookahead: int = 1, twin_copies_per_layer: int | None = None,
             cpu_threads: int = 2, check: bool = False, keep_installed: bool = False
             ) -> LiveResult:
    """Greedy generation of ``max_new_tokens`` tokens from ``inputs`` with ``source``'s routed
    experts offloaded under ``policy`` (see :class:`LiveRunner` for the options).

    ``source``: a model, a tiny config name, a transformers config or a checkpoint folder (built
    with ``seed``). A model object is restored to its original blocks afterwards unless
    ``keep_installed``. Bad input raises one ConfigError.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    model, name = load_live_model(source, seed)
    ids = encode_inputs(inputs, model, source)
    runner = LiveRunner(model, policy, capacity_slots, gpu_memory_gb, device, name=name,
                        resident_all=resident_all, hardware=hardware, lookahead=lookahead,
                        twin_copies_per_layer=twin_copies_per_layer, cpu_threads=cpu_threads,
                        check=check)
    wall = time.perf_counter()
    try:
        tokens, logits = greedy_generate(model, ids, max_new_tokens)
    finally:
        events = runner.finish()
        if not keep_installed:
            runner.remove()
    wall_s = time.perf_counter() - wall
    steps = step_frame(events)
    schedule, request_id, phase = runner.schedule_arrays()
    dev, store = runner.device, runner.store
    summary = {
        "mode": "live", "model": name, "model_type": runner.arch.model_type,
        "policy": runner.policy.name if runner.policy else "all-resident",
        "device": dev.name, "dtype": str(dev.dtype).replace("torch.", ""),
        "capacity_slots": runner.capacity, "cache_bytes": runner.capacity * store.bytes_per_expert,
        "expert_bytes": store.bytes_per_expert, "pinned": store.pinned, "batch": int(ids.shape[0]),
        "prompt_tokens": int(ids.shape[1]), "new_tokens": int(tokens.shape[1]),
        "hardware": runner.profile.name, "resident_all": resident_all,
        "lookahead": runner.distances, **store.describe(),
        **summarize(events),
        **latency_metrics(steps, schedule, request_id, phase),
        "events": len(events), "sim_wall_s": wall_s,
        **{f"hw_{k}": v for k, v in runner.executor.stats.items()},
    }
    return LiveResult(events, steps, summary, logits, tokens, ids, runner.capacity,
                      dict(runner.executor.stats))
