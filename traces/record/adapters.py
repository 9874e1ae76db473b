"""Finding the routers of a Hugging Face MoE model (transformers 5.x).

In transformers 5.x a MoE router is a module of its own whose forward returns
``(router_logits, top_k_weights, top_k_indices)`` for the flattened tokens of the batch
(``[batch * seq, E]``, ``[batch * seq, k]``, ``[batch * seq, k]``), and the MoE block hands exactly
those weights and indices to its experts. A forward hook on the router therefore sees the experts
each token really used, including DeepSeek-V3's correction bias and group limit, DeepSeek-V2's
group-limited greedy choice and Phi-3.5-MoE's sparsemixer; the recorder never recomputes a top-k
from logits.

**Generic discovery** (:func:`find_routers`, first choice): every 5.x model class declares which of
its modules produce ``router_logits`` in ``_can_record_outputs`` (the table behind
``output_router_logits=True``: ``OutputRecorder(MixtralTopKRouter, index=0)``, ...). The routers
are the modules of that class (``layer_name`` filter respected), and the decoder block of each is
the ``layers.N`` in its module name. Only routers whose recorded output is element 0 follow the
``(logits, weights, indices)`` contract; transformers' own capture keeps just the logits, so the
recorder hooks the same modules itself to read weights and indices. About 70 architectures of
transformers 5.23 declare such a router (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, GPT-OSS,
Phi-3.5-MoE, GraniteMoe, GLM-4-MoE, Ernie-4.5-MoE, MiniMax, HunYuan-MoE, Cohere2-MoE, ...).

**Fallback table** (:data:`ADAPTERS`): where a model declares no such router (custom code, a
router that returns another tuple), the router is looked up by architecture at
``layers[i].<block_attr>.<router_attr>``. The table holds the architectures this project was first
built for; the generic path finds the same modules for all of them (``tests/traces/record``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moe_offload_lab.traces.errors import ConfigError

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def read_output(output: Any) -> tuple[Any, Any]:
    """``(weights [tokens, k], indices [tokens, k])`` from a router's forward output."""
    if not isinstance(output, tuple) or len(output) != 3:
        raise ConfigError("router output is not (logits, weights, indices); this recorder "
                          "needs transformers 5.x routers")
    _, weights, indices = output
    return weights, indices


@dataclass(frozen=True)
class RouterSet:
    """The routers of one model: MoE block numbers, router modules and their module names (all
    in block order), and how they were found (``source``: ``output-capture`` or ``table``)."""

    blocks: list[int]
    routers: list[Any]
    names: list[str]
    source: str
    router_class: str

    def block_path(self, layer: int) -> str:
        """Qualified name of MoE layer ``layer``'s MoE block (the router's parent module)."""
        return self.names[layer].rsplit(".", 1)[0]

    def describe(self) -> dict[str, Any]:
        """Provenance entry."""
        how = ("transformers' router-output declaration (_can_record_outputs['router_logits'])"
               if self.source == "output-capture" else "the per-architecture fallback table")
        return {"found_by": how, "router_class": self.router_class,
                "router_modules": self.names[:2] + (["..."] if len(self.names) > 2 else [])}


# ---- generic discovery --------------------------------------------------------------------------
def _router_specs(model: Any) -> list[Any]:
    """The ``router_logits`` output recorders declared by ``model`` and its sub-models."""
    specs = []
    for module in model.modules():
        table = getattr(type(module), "_can_record_outputs", None)
        if not isinstance(table, dict) or "router_logits" not in table:
            continue
        entry = table["router_logits"]
        for spec in entry if isinstance(entry, list) else [entry]:
            if getattr(spec, "target_class", None) is not None and spec not in specs:
                specs.append(spec)
    return specs


def _from_output_capture(model: Any) -> RouterSet | None:
    specs = [s for s in _router_specs(model) if getattr(s, "index", None) == 0]
    if len(specs) != 1:  # none, or a model whose routers return another tuple (index != 0)
        return None
    spec = specs[0]
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, spec.target_class):
            continue
        if spec.layer_name and f".{spec.layer_name.strip('.')}." not in f".{name}.":
            continue
        block = _BLOCK.findall(name)
        if not block:
            return None
        found.append((int(block[-1]), name, module))
    blocks = [b for b, _, _ in found]
    if not found or len(set(blocks)) != len(blocks):
        return None
    found.sort(key=lambda item: item[0])
    return RouterSet([b for b, _, _ in found], [m for _, _, m in found],
                     [n for _, n, _ in found], "output-capture", spec.target_class.__name__)


# ---- fallback table -----------------------------------------------------------------------------
def _every_layer(config: Any) -> list[int]:
    return list(range(config.num_hidden_layers))


def _qwen_layers(config: Any) -> list[int]:
    step = getattr(config, "decoder_sparse_step", 1) or 1
    skip = set(getattr(config, "mlp_only_layers", None) or ())
    return [i for i in range(config.num_hidden_layers) if (i + 1) % step == 0 and i not in skip]


def _deepseek_layers(config: Any) -> list[int]:
    return list(range(config.first_k_dense_replace, config.num_hidden_layers))


@dataclass(frozen=True)
class ArchAdapter:
    """Where one architecture keeps its routers: ``layers[i].<block_attr>.<router_attr>``, and
    the config's own rule for which blocks are MoE (``moe_layers(config)``)."""

    model_type: str
    block_attr: str
    router_attr: str
    moe_layers: Callable[[Any], list[int]]

    def router_of(self, layer: Any) -> Any | None:
        """The router module of one decoder block, or None when the block is dense."""
        block = getattr(layer, self.block_attr, None)
        router = getattr(block, self.router_attr, None) if block is not None else None
        if router is None or not hasattr(router, "top_k") or not hasattr(router, "num_experts"):
            return None
        return router


ADAPTERS: dict[str, ArchAdapter] = {
    a.model_type: a
    for a in (
        ArchAdapter("mixtral", "mlp", "gate", _every_layer),
        ArchAdapter("qwen2_moe", "mlp", "gate", _qwen_layers),
        ArchAdapter("qwen3_moe", "mlp", "gate", _qwen_layers),
        ArchAdapter("olmoe", "mlp", "gate", _every_layer),
        ArchAdapter("deepseek_v2", "mlp", "gate", _deepseek_layers),
        ArchAdapter("deepseek_v3", "mlp", "gate", _deepseek_layers),
        ArchAdapter("gpt_oss", "mlp", "router", _every_layer),
        ArchAdapter("phimoe", "mlp", "router", _every_layer),
        ArchAdapter("granitemoe", "block_sparse_moe", "router", _every_layer),
    )
}


def decoder_layers(model: Any) -> Any:
    """The decoder blocks (``model.model.layers``) of a causal LM."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no decoder layers at model.layers")
    return layers


def _from_table(model: Any) -> RouterSet:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ConfigError(f"{type(model).__name__} (model type {model_type!r}) declares no "
                          f"router with (logits, weights, indices) outputs (is it a MoE model?), "
                          f"and the fallback table knows only {', '.join(sorted(ADAPTERS))}")
    adapter = ADAPTERS[model_type]
    blocks, routers = [], []
    for i, layer in enumerate(decoder_layers(model)):
        router = adapter.router_of(layer)
        if router is not None:
            blocks.append(i)
            routers.append(router)
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no MoE block (no router at "
                          f"layers[i].{adapter.block_attr}.{adapter.router_attr})")
    expected = adapter.moe_layers(model.config)
    if blocks != expected:
        raise ConfigError(f"{type(model).__name__}: routers found in blocks {blocks}, but the "
                          f"config says the MoE blocks are {expected}")
    prefix = "model.layers" if hasattr(model, "model") else "layers"
    names = [f"{prefix}.{b}.{adapter.block_attr}.{adapter.router_attr}" for b in blocks]
    return RouterSet(blocks, routers, names, "table", type(routers[0]).__name__)


def find_routers(model: Any) -> RouterSet:
    """The routers of ``model``: by transformers' own router declaration, else by the
    fallback table; ConfigError when neither finds any."""
    return _from_output_capture(model) or _from_table(model)


def check_moe_config(config: Any, where: str) -> None:
    """ConfigError (naming ``where``) unless a transformers config describes a MoE model,
    checked before any weight is read."""
    from moe_offload_lab.traces.hf_config import spec_from_hf_config

    spec_from_hf_config(config.to_dict(), getattr(config, "model_type", "model"), where=where)
