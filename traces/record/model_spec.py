"""Build a :class:`~traces.spec.ModelSpec` from a loaded Hugging Face MoE model.

The shape comes from the config through the same reader as ``--model config.json``
(:func:`traces.hf_config.spec_from_hf_config`), with what the loaded model shows taking
precedence: the MoE blocks are the blocks where routers were found (they must follow a
dense-prefix-plus-step pattern), experts and top-k are the routers' own, and ``non_expert_bytes``
counts the model's parameters outside ``.experts.`` at the checkpoint dtype (``config.dtype``,
else the loaded one) unless the loaded weights are packed by a quantizer, where the shape estimate
is kept. Expert bytes follow the checkpoint's ``quantization_config``, also when transformers
dequantized the weights for the device (FP8 on a CPU).
"""

from __future__ import annotations

import re
from typing import Any

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.hf_config import layer_pattern, spec_from_hf_config
from moe_offload_lab.traces.record.adapters import RouterSet
from moe_offload_lab.traces.spec import ModelSpec

_EXPERT_PARAM = re.compile(r"\.experts\.")
_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "float64": 8.0,
          "float8_e4m3fn": 1.0, "float8_e5m2": 1.0}

__all__ = ["layer_pattern", "spec_from_model"]


def _dtype_name(config: Any, model: Any) -> str:
    dtype = getattr(config, "dtype", None)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    return str(dtype).removeprefix("torch.")


def spec_from_model(model: Any, routers: RouterSet, name: str) -> ModelSpec:
    """The ModelSpec of ``model`` (see the module docstring)."""
    config = model.config
    data = config.to_dict()
    stored = getattr(model, "moe_lab_checkpoint_quantization", None)
    if not isinstance(data.get("quantization_config"), dict) and isinstance(stored, dict):
        data["quantization_config"] = stored  # the checkpoint's storage, though dequantized here
    dtype = _dtype_name(config, model)
    data["torch_dtype"] = dtype if dtype in _BYTES else "bfloat16"
    base = spec_from_hf_config(data, name, where=f"{type(model).__name__} config")
    first, step = layer_pattern(base.num_layers, routers.blocks)
    changes: dict[str, Any] = {"first_k_dense": first, "moe_layer_step": step,
                               "hf_architecture": type(model).__name__}
    router = routers.routers[0]
    for attr, key in (("num_experts", "num_experts"), ("top_k", "top_k")):
        value = getattr(router, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            changes[key] = value
    if getattr(model, "hf_quantizer", None) is None:  # real weights, not packed ones
        resident = sum(p.numel() for n, p in model.named_parameters()
                       if not _EXPERT_PARAM.search(n))
        changes["non_expert_bytes"] = int(resident * _BYTES.get(dtype, 2.0))
        changes["notes"] = base.notes.replace("non-expert bytes estimated from the shapes",
                                              "non-expert bytes counted from the parameters")
    extra = {**base.extra, "source": "hf-recorder", "checkpoint_dtype": dtype,
             "routers": routers.source}
    try:
        return base.with_overrides(**changes, extra=extra)
    except ConfigError as exc:
        raise ConfigError(f"{type(model).__name__}: {exc}") from None
