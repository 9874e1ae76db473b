"""Load the model to record: a local Hugging Face checkpoint or a random model from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.record.adapters import adapter_for

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _torch_dtype(name: str, config: Any, device: str) -> Any:
    import torch

    if name == "auto":
        if device == "cpu":
            return torch.float32
        stored = getattr(config, "dtype", None)
        return stored if isinstance(stored, torch.dtype) else torch.bfloat16
    return getattr(torch, name)


def load_checkpoint(path: str | Path, device: str = "cpu", dtype: str = "auto") -> Any:
    """A causal LM from a local checkpoint folder, in eval mode on ``device``.

    The architecture is checked before any weight is read: a folder that does not exist, has no
    ``config.json`` or holds a model without a supported MoE router raises ConfigError.
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
        raise ConfigError(f"cannot read the config of {path.name}: "
                          f"{str(exc).splitlines()[0]}") from None
    adapter_for(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=_torch_dtype(dtype, config, device))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load the model in {path.name}: "
                          f"{str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def load_random(config: Any, seed: int, device: str = "cpu", dtype: str = "auto") -> Any:
    """A randomly initialised model (seeded) for a transformers config, in eval mode."""
    from moe_offload_lab.traces.record.tiny import build_model

    adapter_for(config)
    model = build_model(config, seed)
    return model.to(device=device, dtype=_torch_dtype(dtype, config, device)).eval()
