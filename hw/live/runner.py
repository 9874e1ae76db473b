"""LiveRunner and run_live: a Hugging Face MoE model offloading its routed experts.

:class:`LiveRunner` switches the model's experts to live mode's function in transformers' experts
interface (:mod:`hw.live.interface`): the model's own MoE blocks run as written (router, shared
experts, how their outputs combine), and each block's routed experts call
:meth:`LiveRunner.experts_call` with the block's tokens and the router's top-k. Each forward call
of the whole model is one executor step: a forward pre-hook opens the step, the first MoE layer of
the call runs ``begin_step`` (the token count is known there), every MoE layer runs ``moe_layer``,
and a forward hook runs ``end_step`` after the last one, the same policy call order as replay mode.
A forward whose KV cache is empty is a prefill of new requests (one per batch row); one with a
filled cache decodes the same requests. The 2-D ``attention_mask`` of a forward call (its last
``S`` columns: the call's tokens) tells the real tokens from pads: only real tokens reach the
executor, the policy and the step's request and phase rows, so a prefill of left-padded prompts of
lengths ``n_i`` is a step of ``sum(n_i)`` tokens, not ``B * S`` (the routers and shared experts,
being the model's own code, still see the pad rows, as in the original model; pad rows get a zero
routed term, and every real token's attention masks them out).

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
from moe_offload_lab.hw.device import Device
from moe_offload_lab.hw.executor import OffloadExecutor
from moe_offload_lab.hw.live import interface
from moe_offload_lab.hw.live.adapters import LiveArch, inspect_model
from moe_offload_lab.hw.live.store import LiveExpertStore
from moe_offload_lab.hw.replay import DEFAULT_HARDWARE
from moe_offload_lab.hw.slots import slots_for
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.hardware import HardwareProfile, load_hardware
from moe_offload_lab.sim.metrics import latency_metrics, step_frame, summarize
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, PREFILL
from moe_offload_lab.traces.record.adapters import read_output
from moe_offload_lab.traces.record.model_spec import spec_from_model


@dataclass
class LiveResult:
    """One live run."""

    events: pd.DataFrame  # the sim.eventlog schema
    steps: pd.DataFrame  # sim.metrics.step_frame(events)
    summary: dict[str, Any]  # like ReplayResult.summary, mode "live"
    logits: list[torch.Tensor]  # per forward call: [B, S, V] float32 on the host
    tokens: torch.Tensor  # [B, n] greedily generated token ids
    input_ids: torch.Tensor  # [B, S] the prompts, left-padded to the longest
    capacity_slots: int = 0
    stats: dict[str, int] = field(default_factory=dict)  # executor counters
    # [B, S] 1 at real prompt tokens, 0 at pads (left); the prefill logits at pads mean nothing
    attention_mask: torch.Tensor | None = None


def load_live_model(source: Any, seed: int = 0) -> tuple[Any, str]:
    """``(model, name)`` from a model object, a tiny config name (``tiny-mixtral``...), a
    transformers config, or a local checkpoint folder; ConfigError when none of these works."""
    from moe_offload_lab.traces.record.adapters import check_moe_config
    from moe_offload_lab.traces.record.loading import load_checkpoint
    from moe_offload_lab.traces.record.tiny import TINY_CONFIGS, build_model, build_tiny_model

    if isinstance(source, torch.nn.Module):
        return source, getattr(getattr(source, "config", None), "model_type", "model")
    if isinstance(source, str) and source in TINY_CONFIGS:
        return build_tiny_model(source, seed), source
    if hasattr(source, "model_type") and hasattr(source, "to_dict"):  # a transformers config
        check_moe_config(source, f"{source.model_type} config")
        return build_model(source, seed), str(source.model_type)
    if isinstance(source, str | Path):
        return load_checkpoint(source, device="cpu", dtype="float32"), Path(source).name
    raise ConfigError(f"cannot make a model of {type(source).__name__}: give a model, a tiny "
                      f"config name, a transformers config or a checkpoint folder")


def _hardware(hardware: str | HardwareProfile) -> HardwareProfile:
    return hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)


def _mask_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    """The 2-D ``attention_mask`` ``[B, past + S]`` of a forward call, or None (all real)."""
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def _call_shape(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(batch, tokens per row)`` of a forward call, from its input ids or embeddings."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not isinstance(ids, torch.Tensor):
        ids = kwargs.get("inputs_embeds")
    if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        return None
    return int(ids.shape[0]), int(ids.shape[1])


def _to_device_except(model: Any, device: torch.device, keep: list[Any]) -> None:
    """Move every parameter and buffer to ``device`` except those of the modules ``keep`` (the
    routed experts stay in host memory; the executor copies them on demand)."""
    skip = {id(m) for module in keep for m in module.modules()}
    with torch.no_grad():
        for module in model.modules():
            if id(module) in skip:
                continue
            for name, param in module.named_parameters(recurse=False):
                if param.device != device:
                    module._parameters[name] = torch.nn.Parameter(
                        param.data.to(device), requires_grad=param.requires_grad)
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and buffer.device != device:
                    module._buffers[name] = buffer.to(device)


def _cache_empty(kwargs: Mapping[str, Any]) -> bool:
    past = kwargs.get("past_key_values")
    if past is None:
        return True
    length = getattr(past, "get_seq_length", None)
    return length is None or int(length()) == 0


class LiveRunner:
    """Switches ``model``'s experts to live mode and installs the step hooks (see the module
    docstring).

    ``policy``: a Policy, a bundled name or a config mapping (None with ``resident_all``: every
    expert preloaded, no policy). Give one of ``capacity_slots`` and ``gpu_memory_gb``.
    ``lookahead``: how many later MoE layers' routers are applied to each layer's input to fill
    ``ctx.lookahead`` (0: none). Call :meth:`finish` for the event log; :meth:`remove` gives the
    model its own experts implementation back.
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
        self.spec = spec_from_model(model, self.arch.routers, name or self.arch.model_type)
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
        _to_device_except(model, self.device.torch_device, self.arch.experts)  # experts: host
        interface.register()
        self.previous_experts = model.get_experts_implementation()
        for layer, experts in enumerate(self.arch.experts):
            interface.bind(experts, self, layer)
        model.set_experts_implementation(interface.NAME)
        self.router_inputs: list[torch.Tensor | None] = [None] * len(self.arch.experts)
        self.hooks = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                      model.register_forward_hook(self._post)]
        self.hooks += [router.register_forward_pre_hook(self._router_input(layer))
                       for layer, router in enumerate(self.arch.routers.routers)]
        self.step, self.in_step, self.open = -1, False, False
        self.next_request, self.requests = 0, np.zeros(0, dtype=np.int64)
        self.phase_now = PREFILL
        self.mask: torch.Tensor | None = None  # this call's 2-D attention mask
        self.call_shape: tuple[int, int] | None = None  # this call's (batch, tokens per row)
        self.keep: torch.Tensor | None = None  # this step's real rows of [B*S], None: all
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
        self.mask = _mask_of(args, kwargs)
        self.call_shape = _call_shape(args, kwargs)

    def _router_input(self, layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            hidden = args[0]
            self.router_inputs[layer] = hidden.reshape(-1, hidden.shape[-1])  # [B*S, H]

        return hook

    def enter_layer(self, layer: int, rows: int) -> torch.Tensor | None:
        """A MoE layer's experts start on ``rows`` (= B*S) flattened tokens: the first layer of a
        forward call begins the step.

        Returns the real rows (a device index tensor, batch-major) when the call's attention mask
        marks pads among its tokens, else None (every row is a real token).
        """
        if self.in_step:
            return self.keep
        if not self.open:
            raise RuntimeError("an MoE layer ran outside a forward call of the whole model")
        batch, seq = self.call_shape if self.call_shape is not None else (rows, 1)
        if batch * seq != rows:
            batch, seq = rows, 1  # the call's tokens arrive in another shape: one row each
        lengths = np.full(batch, seq, dtype=np.int64)  # real tokens per batch row
        self.keep = None
        if self.mask is not None and self.mask.shape[0] == batch and self.mask.shape[1] >= seq:
            real = self.mask[:, -seq:] != 0  # [B, S] this call's tokens
            if not bool(real.all()):
                lengths = real.sum(dim=1).to("cpu").numpy().astype(np.int64)
                if (lengths == 0).any():
                    raise ConfigError("a batch row has no real token (all pads) in a forward "
                                      "call; every request needs at least one token")
                self.keep = real.reshape(-1).nonzero().squeeze(1)  # [t] batch-major
        if self.phase_now == PREFILL:
            self.requests = np.arange(self.next_request, self.next_request + batch)
            self.next_request += batch
        elif len(self.requests) != batch:
            raise ConfigError(f"a decode call of batch {batch} follows a prefill of "
                              f"{len(self.requests)} requests")
        request_ids = np.repeat(self.requests, lengths)  # [t] batch-major, as the real rows
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
        return self.keep

    def _post(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        self.open = False
        self.mask, self.keep, self.call_shape = None, None, None
        self.router_inputs = [None] * len(self.router_inputs)
        if self.in_step:
            self.executor.end_step()
            self.in_step = False

    # ---- per layer ------------------------------------------------------------------------------
    def experts_call(self, layer: int, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                     top_k_weights: torch.Tensor) -> torch.Tensor:
        """MoE layer ``layer``'s routed experts, called by transformers' experts interface:
        ``hidden_states`` [T, H] with the router's ``top_k_index`` and ``top_k_weights`` [T, k]
        -> the weighted routed sum [T, H] (zero at pad rows)."""
        rows = hidden_states.shape[0]
        keep = self.enter_layer(layer, rows)  # real rows [t] of a padded prefill, or None
        x = hidden_states if keep is None else hidden_states.index_select(0, keep)  # [t, H]
        indices = top_k_index if keep is None else top_k_index.index_select(0, keep)  # [t, k]
        weights = top_k_weights if keep is None else top_k_weights.index_select(0, keep)
        state = self.router_inputs[layer]
        if state is None or state.shape[0] != rows:
            state = hidden_states  # [T, H] the router input, when no hook saw it
        state = state if keep is None else state.index_select(0, keep)  # [t, H]
        lookahead = self.lookahead(layer, state)  # {d: [t, k]}
        ids = indices.detach().to("cpu").numpy()  # [t, k] the host reads the routing
        gates = weights.detach().to("cpu", torch.float32).numpy()  # [t, k]
        routed = self.moe_layer(layer, x, ids, np.asarray(gates), lookahead)  # [t, H]
        if keep is not None:  # pad rows get zeros (masked out by attention, never logged)
            routed = hidden_states.new_zeros(hidden_states.shape).index_copy_(0, keep, routed)
        return routed.to(hidden_states.dtype)

    def lookahead(self, layer: int, flat: torch.Tensor) -> dict[int, np.ndarray]:
        """``{d: [t, k]}``: the experts MoE layer ``layer + d``'s router picks for ``flat``
        (the layer's router input at its real token rows)."""
        out = {}
        routers = self.arch.routers.routers
        for d in range(1, self.distances + 1):
            if layer + d < len(routers):
                _, indices = read_output(routers[layer + d](flat))
                out[d] = indices.detach().to("cpu").numpy()
        return out

    def moe_layer(self, layer: int, flat: torch.Tensor, ids: np.ndarray, gates: np.ndarray,
                  lookahead: dict[int, np.ndarray]) -> torch.Tensor:
        """Log the non-expert work since the last MoE layer, run the routed experts of the real
        token rows ``flat`` [t, H] -> [t, H]."""
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
        """Give the model its own experts implementation back and drop the hooks."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        for experts in self.arch.experts:
            interface.unbind(experts)
        self.model.set_experts_implementation(self.previous_experts)

    def schedule_arrays(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """``(schedule, request_id per row, phase per row)`` for :func:`latency_metrics`."""
        if not self.schedule:
            empty = np.zeros(0, dtype=np.int64)
            return [], empty, empty.astype(np.int8)
        return self.schedule, np.concatenate(self.row_request), np.concatenate(self.row_phase)


def greedy_generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int,
                    attention_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding with a KV cache: ``(new tokens [B, n], logits of each forward call)``.

    Call 0 is the prefill ``[B, S, V]``, then one ``[B, 1, V]`` per decode call; logits come back
    as float32 on the host. Works the same on the original and the offloading model.

    ``attention_mask`` ``[B, S]`` (1: token, 0: pad) is for left-padded prompts. As
    transformers' ``generate`` does, a mask of all ones is dropped (the calls are those of an
    unpadded batch), and otherwise every call gets the mask, extended by a column of ones per
    decode step, and ``position_ids``: ``cumsum(mask) - 1`` (0 at pads) in the prefill, then the
    last position plus one. The prefill logits at pad positions mean nothing.
    """
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = None
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(ids.shape):
            raise ConfigError(f"attention_mask {tuple(attention_mask.shape)} does not match "
                              f"input_ids {tuple(ids.shape)}")
        if not bool((attention_mask != 0).all()):
            mask = (attention_mask != 0).to(device=device, dtype=torch.long)  # [B, S]
    extra: dict[str, Any] = {}
    if mask is not None:
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # [B, S]
        extra = {"attention_mask": mask, "position_ids": position_ids}
    logits_all: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, **extra)
        for i in range(max_new_tokens):
            logits = out.logits  # [B, s, V]
            logits_all.append(logits.to("cpu", torch.float32))
            nxt = logits[:, -1].argmax(dim=-1)  # [B]
            tokens.append(nxt.to("cpu"))
            if i + 1 < max_new_tokens:
                if mask is not None:  # one more real column, one more position
                    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
                    extra = {"attention_mask": mask,
                             "position_ids": extra["position_ids"][:, -1:] + 1}  # [B, 1]
                out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values,
                            use_cache=True, **extra)
        if max_new_tokens == 0:
            logits_all.append(out.logits.to("cpu", torch.float32))
    new = torch.stack(tokens, dim=1) if tokens else torch.zeros(len(ids), 0, dtype=torch.long)
    return new, logits_all


def encode_inputs(inputs: Any, model: Any, source: Any = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, S], attention_mask [B, S])`` from a tensor, a list of id lists, a string or
    strings (the checkpoint's tokenizer when it has one, else UTF-8 bytes for a 256+
    vocabulary).

    Prompts of different lengths are left-padded to the longest with the pad id (the
    tokenizer's pad token when a checkpoint tokenizer encoded them, else the config's
    ``pad_token_id``, else 0); the mask is 1 at real tokens, 0 at pads. A tensor is taken as
    unpadded. ConfigError for no prompt, an empty prompt or ids outside the vocabulary.
    """
    vocab = int(model.config.vocab_size)
    pad = None
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() not in (1, 2) or inputs.numel() == 0:
            raise ConfigError(f"input ids must be a non-empty [S] or [B, S] tensor, got shape "
                              f"{tuple(inputs.shape)}")
        if inputs.dtype.is_floating_point or inputs.dtype.is_complex or inputs.dtype == torch.bool:
            raise ConfigError(f"input ids must be integers, got {inputs.dtype}")
        ids = inputs if inputs.dim() == 2 else inputs[None]
        rows = None
    elif isinstance(inputs, str) or (isinstance(inputs, Sequence) and inputs
                                     and all(isinstance(p, str) for p in inputs)):
        prompts = [inputs] if isinstance(inputs, str) else list(inputs)
        rows, pad = _tokenize(prompts, model, source)
    elif isinstance(inputs, Sequence) and inputs and all(
            isinstance(r, Sequence | torch.Tensor) and not isinstance(r, str) for r in inputs):
        rows = [r.tolist() if isinstance(r, torch.Tensor) else list(r) for r in inputs]
    else:
        raise ConfigError("inputs must be token ids [B, S], lists of ids, a string or strings")
    if rows is not None:
        if any(len(r) == 0 for r in rows):
            raise ConfigError("an empty prompt: every prompt needs at least one token")
        if not all(isinstance(t, int | np.integer) and not isinstance(t, bool)
                   for r in rows for t in r):
            raise ConfigError("input ids must be integers")
        if not all(0 <= int(t) < vocab for r in rows for t in r):
            raise ConfigError(f"input ids must be a non-empty integer batch in [0, {vocab})")
        ids, mask = _left_pad(rows, _pad_id(pad, model, vocab))
    else:
        mask = torch.ones(ids.shape, dtype=torch.long)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ConfigError(f"input ids must be a non-empty integer batch in [0, {vocab})")
    return ids.long(), mask


def _pad_id(tokenizer_pad: Any, model: Any, vocab: int) -> int:
    """The tokenizer's pad id, else the config's ``pad_token_id``, else 0 (in the vocabulary)."""
    for pad in (tokenizer_pad, getattr(model.config, "pad_token_id", None)):
        if isinstance(pad, int) and not isinstance(pad, bool) and 0 <= pad < vocab:
            return pad
    return 0


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, S], mask [B, S])``: ``rows`` left-padded with ``pad`` to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor([int(t) for t in r], dtype=torch.long)
        mask[b, width - len(r):] = 1
    return ids, mask


def _tokenize(prompts: list[str], model: Any, source: Any) -> tuple[list[list[int]], Any]:
    """``(token id lists, the tokenizer's pad id or None)``."""
    if isinstance(source, str | Path) and Path(source).is_dir():
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
            return [list(tok(p)["input_ids"]) for p in prompts], tok.pad_token_id
        except (OSError, ValueError):
            pass
    if int(model.config.vocab_size) < 256:
        raise ConfigError("string prompts need a tokenizer or a vocabulary of 256+ (bytes)")
    return [list(p.encode("utf-8")) for p in prompts], None


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
    with ``seed``). ``inputs``: see :func:`encode_inputs`; prompts of different lengths are
    left-padded to the longest, and both the attention mask and the matching position ids go to
    every forward call (:func:`greedy_generate`), while the pad tokens never reach the executor,
    the policy or the event log. A model object gets its own experts implementation back
    afterwards unless ``keep_installed``. Bad input raises one ConfigError.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    model, name = load_live_model(source, seed)
    ids, mask = encode_inputs(inputs, model, source)
    runner = LiveRunner(model, policy, capacity_slots, gpu_memory_gb, device, name=name,
                        resident_all=resident_all, hardware=hardware, lookahead=lookahead,
                        twin_copies_per_layer=twin_copies_per_layer, cpu_threads=cpu_threads,
                        check=check)
    wall = time.perf_counter()
    try:
        tokens, logits = greedy_generate(model, ids, max_new_tokens, attention_mask=mask)
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
        "prompt_tokens": int(ids.shape[1]), "prompt_tokens_total": int(mask.sum()),
        "new_tokens": int(tokens.shape[1]),
        "hardware": runner.profile.name, "resident_all": resident_all,
        "lookahead": runner.distances, **store.describe(),
        **summarize(events),
        **latency_metrics(steps, schedule, request_id, phase),
        "events": len(events), "sim_wall_s": wall_s,
        **{f"hw_{k}": v for k, v in runner.executor.stats.items()},
    }
    return LiveResult(events, steps, summary, logits, tokens, ids, runner.capacity,
                      dict(runner.executor.stats), mask)
