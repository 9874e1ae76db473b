"""Load the model to record: a local Hugging Face checkpoint or a random model from a config.

A checkpoint too large for one device loads with a ``device_map`` (``auto``, ``balanced``,
``sequential``, one device name, or a JSON ``{module: device}``), optionally capped per device
by ``max_memory`` (``"0=70GiB,cpu=200GiB"``) with the rest offloaded to ``offload_folder`` on
disk; transformers hands the placement to accelerate, which moves each module's weights in
when it runs (``pip install accelerate``). Quantized weights: a checkpoint saved quantized
(FP8, MXFP4, GPTQ, AWQ, compressed-tensors... with a ``quantization_config`` in its
``config.json``) loads as transformers decides for the device (on the CPU it dequantizes FP8 and
MXFP4); ``quantization`` quantizes a full-precision checkpoint while loading: ``bnb-4bit`` (NF4)
and ``bnb-8bit`` with bitsandbytes, ``fp8`` with transformers' fine-grained FP8 (a GPU of
compute capability 8.9+). A missing backend package or an unsupported device is one ConfigError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError, first_line
from moe_offload_lab.traces.record.adapters import check_moe_config

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("bnb-4bit", "bnb-8bit", "fp8")


def _torch_dtype(name: str, config: Any, device: str) -> Any:
    import torch

    if name == "auto":
        if device == "cpu":
            return torch.float32
        stored = getattr(config, "dtype", None)
        return stored if isinstance(stored, torch.dtype) else torch.bfloat16
    return getattr(torch, name)


def parse_device_map(text: str | None) -> str | dict[str, Any] | None:
    """A ``--device-map`` value: a strategy or device name, or a JSON object."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--device-map is not valid JSON ({first_line(exc)})") from None
        if not isinstance(value, dict):
            raise ConfigError("--device-map JSON must be an object {module: device}")
        return value
    return text


def parse_max_memory(text: str | None) -> dict[Any, str] | None:
    """``"0=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", "cpu": "200GiB"}``."""
    if text is None or not text.strip():
        return None
    out: dict[Any, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--max-memory expects DEVICE=SIZE[,DEVICE=SIZE...], got {text!r}")
        out[int(key) if key.isdigit() else key] = value
    return out


def quantization_config(name: str | None) -> Any:
    """A transformers quantization config for ``--quantization`` (None: the checkpoint's own)."""
    if name is None:
        return None
    if name not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {name!r}; known: {', '.join(QUANTIZATIONS)}")
    import transformers

    if name == "fp8":
        return transformers.FineGrainedFP8Config()
    return transformers.BitsAndBytesConfig(load_in_4bit=name == "bnb-4bit",
                                           load_in_8bit=name == "bnb-8bit",
                                           bnb_4bit_quant_type="nf4")


def load_checkpoint(path: str | Path, device: str = "cpu", dtype: str = "auto", *,
                    device_map: str | dict[str, Any] | None = None,
                    max_memory: dict[Any, str] | None = None,
                    offload_folder: str | Path | None = None,
                    quantization: str | None = None) -> Any:
    """A causal LM from a local checkpoint folder, in eval mode.

    Without ``device_map`` the whole model goes to ``device``; with one, transformers and
    accelerate place it (see the module docstring) and ``device`` is not used. The architecture
    is checked before any weight is read: a folder that does not exist, has no ``config.json`` or
    holds a model that is not MoE raises ConfigError.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model path {path} does not exist (download the checkpoint first)")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"model path {path} is not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the config of {path.name}: {first_line(exc)}") from None
    check_moe_config(config, path.name)
    if (max_memory or offload_folder) and device_map is None:
        raise ConfigError("max memory and an offload folder need a device map (e.g. auto)")
    import torch

    stored = _stored_quantization(path)
    target = device if device_map is None else ("cuda" if torch.cuda.is_available() else "cpu")
    if stored is not None:  # a quantized checkpoint dequantizes to its own dtype, also on a CPU
        target = "cuda"
    torch_dtype = _torch_dtype(dtype, config, target)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch_dtype}
    if device_map is not None:
        kwargs.update(device_map=device_map, max_memory=max_memory,
                      offload_folder=str(offload_folder) if offload_folder else None)
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"cannot load the model in {path.name}: {first_line(exc)}") from None
    if getattr(model, "hf_quantizer", None) is None and device_map is None:
        model = model.to(device)
        if stored is not None:  # dequantized weights come back in the checkpoint's dtype
            model = model.to(dtype=torch_dtype)
    if stored is not None:  # kept even when transformers dequantized the weights on load
        model.moe_lab_checkpoint_quantization = stored
    return model.eval()


def _stored_quantization(path: Path) -> dict[str, Any] | None:
    """The ``quantization_config`` of a checkpoint's own config.json, or None."""
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quant = raw.get("quantization_config") if isinstance(raw, dict) else None
    return quant if isinstance(quant, dict) else None


def load_random(config: Any, seed: int, device: str = "cpu", dtype: str = "auto") -> Any:
    """A randomly initialised model (seeded) for a transformers config, in eval mode."""
    from moe_offload_lab.traces.record.tiny import build_model

    check_moe_config(config, f"{getattr(config, 'model_type', '?')} config")
    model = build_model(config, seed)
    return model.to(device=device, dtype=_torch_dtype(dtype, config, device)).eval()


def input_device(model: Any) -> Any:
    """The device a model's input ids go to: where its embedding runs (accelerate's execution
    device when the model was placed with a device map; the CPU for weights offloaded to disk)."""
    import torch

    embedding = model.get_input_embeddings()
    hook = getattr(embedding, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    device = embedding.weight.device
    return torch.device("cpu") if device.type == "meta" else device


def placement(model: Any) -> dict[str, Any]:
    """Provenance of where the weights live: the device map's devices and how many modules each
    holds, and the quantization method (when any)."""
    device_map = getattr(model, "hf_device_map", None)
    out: dict[str, Any] = {}
    if device_map:
        counts: dict[str, int] = {}
        for device in device_map.values():
            counts[str(device)] = counts.get(str(device), 0) + 1
        out["device_map"] = counts
    quant = getattr(model.config, "quantization_config", None)
    stored = getattr(model, "moe_lab_checkpoint_quantization", None)
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else \
            getattr(quant, "quant_method", None)
        out["quantization"] = str(getattr(method, "value", method))
    elif stored is not None:
        out["quantization"] = (f"{stored.get('quant_method', '?')} checkpoint, dequantized by "
                               f"transformers on this device")
    return out
