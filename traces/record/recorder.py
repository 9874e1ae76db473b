"""Record the routing of a Hugging Face MoE model while it serves prompts.

Prompts are processed in batches of ``batch_size`` consecutive prompts: one prefill forward pass
over the left-padded batch (attention mask and position ids make padding invisible), then up to
``max_new_tokens`` decode steps with a KV cache, each feeding every request's last generated token
(greedy at temperature 0, else sampled from softmax(logits / temperature) with a generator seeded
by ``seed`` and the batch number, so a resumed run draws the same tokens).

Rows, in the order the tokens were processed: a batch's prefill tokens request by request (one
row per prompt token, positions 0 .. P-1, phase prefill), then per decode step one row per live
request (the token fed at position P + step, phase decode). Padding never becomes a row. A request
stops when it samples the tokenizer's end-of-sequence token (if ``stop_at_eos``), which is then not
fed. Request ids are the prompts' indices.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, PREFILL, Trace
from moe_offload_lab.traces.record.adapters import find_routers
from moe_offload_lab.traces.record.hooks import RouterCapture
from moe_offload_lab.traces.record.loading import input_device, placement
from moe_offload_lab.traces.record.lookahead import FeatureProjection, lookahead_rows
from moe_offload_lab.traces.record.model_spec import spec_from_model
from moe_offload_lab.traces.record.parts import PartStore
from moe_offload_lab.traces.record.prompts import ByteTokenizer

RECORDER = "moe_offload_lab.traces.record"


@dataclass(frozen=True)
class RecordSettings:
    """What to record and how to decode (see the module docstring)."""

    max_new_tokens: int = 16
    batch_size: int = 4
    lookahead: int = 0
    features: int = 0
    feature_seed: int = 0
    temperature: float = 0.0
    seed: int = 0
    stop_at_eos: bool = True

    def check(self) -> None:
        """ConfigError for a value out of range."""
        for name in ("max_new_tokens", "lookahead", "features"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise ConfigError(f"temperature must be finite and >= 0, got {self.temperature}")


@dataclass
class Recording:
    """A recorded trace and, per request, the token ids its rows processed (prompt, then the
    generated tokens that were fed back)."""

    trace: Trace
    tokens: list[list[int]]


def _choose(logits: Any, temperature: float, generator: Any) -> Any:
    """Next token per row of ``logits`` [B, V]: argmax, or a sample at ``temperature``."""
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V]
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class _BatchRecorder:
    """Runs one batch and turns the captured router outputs into trace rows."""

    def __init__(self, model: Any, capture: RouterCapture, settings: RecordSettings,
                 top_k: int, projection: FeatureProjection | None, eos: int | None,
                 pad: int) -> None:
        self.model, self.capture, self.settings = model, capture, settings
        self.top_k, self.projection, self.eos, self.pad = top_k, projection, eos, pad
        self.device = input_device(model)

    def _collect(self, rows: Any, out: dict[str, list]) -> None:
        import torch

        cap = self.capture
        cap.check_complete()
        ids = torch.stack([i[rows] for i in cap.indices], dim=1)  # [n, L, k]
        gates = torch.stack([w[rows] for w in cap.weights], dim=1)  # [n, L, k]
        out["expert_ids"].append(ids.to("cpu", torch.int16).numpy())
        out["gate_weights"].append(gates.to("cpu", torch.float32).numpy())
        if self.settings.lookahead:
            with cap.paused():
                ahead = lookahead_rows(cap.routers, cap.inputs, rows, self.settings.lookahead,
                                       self.top_k)
            out["lookahead"].append(np.stack([ahead[d] for d in sorted(ahead)]))  # [D, n, L, k]
        if self.projection is not None:
            out["features"].append(self.projection(cap.inputs, rows))  # [n, L, F]
        cap.clear()

    def run(self, prompts: list[list[int]], request_ids: list[int], generator: Any
            ) -> dict[str, np.ndarray]:
        """Prefill and decode one batch; the arrays of its rows plus the tokens fed."""
        import torch
        from transformers import DynamicCache

        s = self.settings
        batch, lengths = len(prompts), [len(p) for p in prompts]
        width = max(lengths)
        input_ids = torch.full((batch, width), self.pad, dtype=torch.long)  # [B, S]
        mask = torch.zeros((batch, width), dtype=torch.long)  # [B, S]
        for b, tokens in enumerate(prompts):
            input_ids[b, width - len(tokens):] = torch.tensor(tokens)
            mask[b, width - len(tokens):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, S]
        out: dict[str, list] = {k: [] for k in ("expert_ids", "gate_weights", "lookahead",
                                                "features")}
        req, pos, phase = [], [], []
        fed: list[list[int]] = [list(p) for p in prompts]

        cache = DynamicCache(config=self.model.config)
        self.capture.clear()
        result = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                            past_key_values=cache, use_cache=True, logits_to_keep=1,
                                output_router_logits=False)
        self._collect(mask.reshape(-1).bool(), out)  # b-major: request by request, in order
        for b in range(batch):
            req += [request_ids[b]] * lengths[b]
            pos += list(range(lengths[b]))
            phase += [PREFILL] * lengths[b]

        alive = torch.ones(batch, dtype=torch.bool, device=self.device)
        step_positions = torch.tensor(lengths, device=self.device)  # [B]
        for step in range(s.max_new_tokens):
            next_tokens = _choose(result.logits[:, -1, :], s.temperature, generator)  # [B]
            if s.stop_at_eos and self.eos is not None:
                alive &= next_tokens != self.eos
            if not bool(alive.any()):
                break
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype,
                                               device=self.device)], dim=1)  # [B, S + step + 1]
            result = self.model(input_ids=next_tokens[:, None], attention_mask=mask,
                                position_ids=(step_positions + step)[:, None],
                                past_key_values=cache, use_cache=True, logits_to_keep=1,
                                output_router_logits=False)
            self._collect(alive, out)
            for b in torch.nonzero(alive).flatten().tolist():
                req.append(request_ids[b])
                pos.append(lengths[b] + step)
                phase.append(DECODE)
                fed[b].append(int(next_tokens[b]))

        arrays = {
            "request_id": np.asarray(req, np.int32), "position": np.asarray(pos, np.int32),
            "phase": np.asarray(phase, np.int8),
            "expert_ids": np.concatenate(out["expert_ids"]),  # [n, L, k]
            "gate_weights": np.concatenate(out["gate_weights"]),  # [n, L, k]
            "token_ids": np.concatenate([np.asarray(f, np.int64) for f in fed]),
            "token_counts": np.asarray([len(f) for f in fed], np.int64),
        }
        if out["lookahead"]:
            arrays["lookahead"] = np.concatenate(out["lookahead"], axis=1)  # [D, n, L, k]
        if out["features"]:
            arrays["features"] = np.concatenate(out["features"])  # [n, L, F]
        return arrays


def _fingerprint(model: Any, routers: list[Any]) -> str:
    """Hash of the config and of every router's weights (cheap, and changes with the model).
    Router weights offloaded to disk (meta tensors) count by shape only."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for router in routers:
        for name, tensor in router.state_dict().items():
            if tensor.device.type == "meta":
                digest.update(f"{name}{tuple(tensor.shape)}".encode())
            else:
                digest.update(tensor.detach().to("cpu").float().numpy().tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _config_dict(config: Any) -> dict[str, Any]:
    """The model config as JSON, without the local path it was loaded from."""
    values = _json_safe(config.to_dict())
    for key in ("_name_or_path", "name_or_path"):
        values.pop(key, None)
    return values


def record_requests(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]],
                    tokenizer: Any = None, settings: RecordSettings | None = None, *,
                    model_name: str | None = None, provenance: dict[str, Any] | None = None,
                    work_dir: str | Path | None = None, progress: bool = True) -> Recording:
    """Record ``prompts`` through ``model``; returns the trace and the tokens of each request.

    ``prompts`` are strings (encoded with ``tokenizer``, by default :class:`ByteTokenizer`) or
    lists of token ids. ``work_dir`` makes the run resumable: finished batches are kept there and
    reused by a rerun with the same model, prompts and settings (the directory is left in place;
    the CLI deletes it after writing the trace). ``provenance`` entries are added to the trace's.
    The model is put in eval mode (stochastic routers such as Phi-3.5-MoE's are deterministic
    there).
    """
    import torch
    from tqdm.auto import tqdm

    settings = settings or RecordSettings()
    settings.check()
    found = find_routers(model)
    routers = found.routers
    model.eval()
    name = model_name or Path(getattr(model.config, "name_or_path", "") or "").name \
        or model.config.model_type
    spec = spec_from_model(model, found, name)
    vocab = int(model.config.vocab_size)
    tokenizer = tokenizer or ByteTokenizer(vocab)
    encoded = [tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in p]
               for p in prompts]
    if not encoded:
        raise ConfigError("no prompt to record")
    for i, tokens in enumerate(encoded):
        if not tokens:
            raise ConfigError(f"prompt {i} encodes to no token")
        if min(tokens) < 0 or max(tokens) >= vocab:
            raise ConfigError(f"prompt {i} has a token id outside the vocabulary [0, {vocab})")
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(t) for t in encoded) + settings.max_new_tokens
    if limit is not None and longest > limit:
        raise ConfigError(f"the longest prompt plus max_new_tokens is {longest} tokens, more "
                          f"than the model's max_position_embeddings={limit}")

    projection = (FeatureProjection(spec.hidden_size, settings.features, settings.feature_seed)
                  if settings.features else None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", 0) or 0
    starts = list(range(0, len(encoded), settings.batch_size))
    store = None
    if work_dir is not None:
        prompt_hash = hashlib.sha256(json.dumps(encoded).encode()).hexdigest()
        key = {"recorder": RECORDER, "model": _fingerprint(model, routers),
               "prompts": prompt_hash, "settings": asdict(settings), "eos": eos}
        store = PartStore(work_dir, key)

    device = input_device(model)
    capture = RouterCapture(routers, keep_inputs=bool(settings.lookahead or settings.features))
    runner = _BatchRecorder(model, capture, settings, spec.top_k, projection, eos, pad)
    parts = []
    bar = tqdm(total=len(encoded), unit="prompt", desc="record", disable=not progress)
    with capture, torch.inference_mode(), bar:
        for index, start in enumerate(starts):
            batch = encoded[start:start + settings.batch_size]
            if store is not None and store.has(index):
                arrays = store.load(index)
            else:
                generator = None
                if settings.temperature > 0:
                    generator = torch.Generator(device=device)
                    generator.manual_seed(settings.seed * 1_000_003 + index)
                arrays = runner.run(batch, list(range(start, start + len(batch))), generator)
                if store is not None:
                    store.save(index, arrays)
            parts.append(arrays)
            bar.update(len(batch))

    def cat(key: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([p[key] for p in parts], axis=axis)

    lookahead = {}
    if settings.lookahead:
        stacked = cat("lookahead", axis=1)  # [D, T, L, k]
        lookahead = {d + 1: np.ascontiguousarray(stacked[d]) for d in range(settings.lookahead)}
    tokens: list[list[int]] = []
    for p in parts:
        offsets = np.concatenate([[0], np.cumsum(p["token_counts"])])
        tokens += [p["token_ids"][a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:],
                                                                strict=True)]
    phase = cat("phase")
    meta = {
        "source": "hf-recorder", "recorder": RECORDER, "model": name,
        "hf_architecture": type(model).__name__,
        "model_config": _config_dict(model.config),
        "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
        "decode": {"strategy": "greedy" if settings.temperature == 0 else "sampled",
                   "max_new_tokens": settings.max_new_tokens,
                   "temperature": settings.temperature, "seed": settings.seed,
                   "batch_size": settings.batch_size, "stop_at_eos": settings.stop_at_eos,
                   "padding": "left, attention mask"},
        "requests": len(encoded), "prefill_tokens": int((phase == PREFILL).sum()),
        "decode_tokens": int((phase == DECODE).sum()),
        "lookahead_distances": list(range(1, settings.lookahead + 1)),
        "features": projection.describe() if projection is not None else None,
        "device": str(device), "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "routers": found.describe(), **placement(model),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    meta.update(_json_safe(provenance or {}))
    trace = Trace(spec=spec, request_id=cat("request_id"), position=cat("position"), phase=phase,
                  expert_ids=cat("expert_ids"), gate_weights=cat("gate_weights"),
                  lookahead=lookahead,
                  features=cat("features") if settings.features else None, provenance=meta)
    trace.validate("recorded trace")
    return Recording(trace, tokens)


def record(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], tokenizer: Any = None,
           settings: RecordSettings | None = None, **kwargs: Any) -> Trace:
    """Record ``prompts`` through ``model`` and return the :class:`~traces.format.Trace`.

    Keyword arguments are those of :func:`record_requests`; the settings can also be given as
    keywords (``record(model, prompts, max_new_tokens=8, lookahead=2)``).
    """
    fields = set(RecordSettings.__dataclass_fields__)
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    if overrides:
        settings = RecordSettings(**{**asdict(settings or RecordSettings()), **overrides})
    return record_requests(model, prompts, tokenizer, settings, **kwargs).trace
