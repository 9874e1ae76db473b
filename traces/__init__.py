"""Routing data: ModelSpec, the trace format, the synthetic generator and trace analysis.

This package needs no torch (only the recorders, which import it lazily).
"""

from traces.catalog import available, load_model
from traces.errors import ConfigError, MoeLabError, TraceError
from traces.format import DECODE, NO_EXPERT, PREFILL, SCHEMA_VERSION, Trace
from traces.spec import ModelSpec

__all__ = [
    "DECODE", "NO_EXPERT", "PREFILL", "SCHEMA_VERSION",
    "ConfigError", "ModelSpec", "MoeLabError", "Trace", "TraceError", "available", "load_model",
]
