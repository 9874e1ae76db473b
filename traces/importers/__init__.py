"""Importers and exporters between routing traces and other tools' capture formats.

=============  ==========================================  ======================================
format         import (``moe-trace import --from``)        export (``moe-trace export --to``)
=============  ==========================================  ======================================
vllm           routed-experts ``.npy``/``.npz``; OpenAI-    ``.npz`` (``routed_experts`` + lengths)
               server responses ``.json``/``.jsonl``
megatron       Megatron-Core router traces ``.jsonl``       ``.jsonl`` (+ probs and request fields)
               (one or many rank files)
sglang         expert-distribution dumps ``.pt``            -
               (``logical_count`` or per-token records)
eplb           load matrix ``[layers, experts]``            load matrix (``.npy``/``.pt``/``.csv``)
moe-infinity   expert activation matrices ``.npy``          ``.npy`` [requests, L, E] counts
csv            long CSV                                    long CSV
npy            plain ``.npz`` arrays                       plain ``.npz`` arrays
=============  ==========================================  ======================================

``import_trace(fmt, path, model, **options)`` and ``export_trace(fmt, trace, path, **options)``
dispatch by format name; ``traces/importers/README.md`` documents each layout and what it loses.
``model`` is a catalog name, a ModelSpec YAML, a Hugging Face ``config.json`` or a ModelSpec.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers.eplb import export_eplb, import_eplb
from moe_offload_lab.traces.importers.megatron import export_megatron, import_megatron
from moe_offload_lab.traces.importers.moe_infinity import export_moe_infinity, import_moe_infinity
from moe_offload_lab.traces.importers.plain import export_csv, export_npz, import_csv, import_npz
from moe_offload_lab.traces.importers.sglang import import_sglang
from moe_offload_lab.traces.importers.vllm import export_vllm, import_vllm
from moe_offload_lab.traces.spec import ModelSpec

IMPORTERS: dict[str, Callable[..., Trace]] = {
    "vllm": import_vllm,
    "megatron": import_megatron,
    "sglang": import_sglang,
    "eplb": import_eplb,
    "moe-infinity": import_moe_infinity,
    "csv": import_csv,
    "npy": import_npz,
}
EXPORTERS: dict[str, Callable[..., Path]] = {
    "csv": export_csv,
    "npy": export_npz,
    "vllm": export_vllm,
    "megatron": export_megatron,
    "eplb": export_eplb,
    "moe-infinity": export_moe_infinity,
}


def import_trace(fmt: str, path: str | Path, model: str | Path | ModelSpec,
                 **options: Any) -> Trace:
    """Read ``path`` in format ``fmt`` as a validated trace of ``model`` (catalog name, YAML,
    Hugging Face config.json or spec)."""
    if fmt not in IMPORTERS:
        raise ConfigError(f"unknown import format {fmt!r}; known: {', '.join(IMPORTERS)}")
    return IMPORTERS[fmt](path, model, **options)


def export_trace(fmt: str, trace: Trace, path: str | Path, **options: Any) -> Path:
    """Write ``trace`` to ``path`` in format ``fmt`` (atomically); returns the path."""
    if fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}; known: {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt](trace, path, **options)


__all__ = ["EXPORTERS", "IMPORTERS", "export_trace", "import_trace"]
