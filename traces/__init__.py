"""Routing data: ModelSpec, the trace format, the synthetic generator and trace analysis.

This package needs no torch (only the recorders, which import it lazily).
"""

from moe_offload_lab.traces.catalog import available, load_model
from moe_offload_lab.traces.errors import ConfigError, MoeLabError, TraceError
from moe_offload_lab.traces.format import DECODE, NO_EXPERT, PREFILL, SCHEMA_VERSION, Trace
from moe_offload_lab.traces.spec import ModelSpec

__all__ = [
    "DECODE", "NO_EXPERT", "PREFILL", "SCHEMA_VERSION",
    "ConfigError", "ModelSpec", "MoeLabError", "Trace", "TraceError", "available", "load_model",
]
