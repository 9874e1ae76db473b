"""Record the routing of Hugging Face MoE models into traces (``moe-trace record``).

Importing this package needs no torch; the recording functions import torch and transformers when
called. See ``traces/record/README.md``.
"""

from moe_offload_lab.traces.record.recorder import (
    Recording,
    RecordSettings,
    record,
    record_requests,
)

__all__ = ["RecordSettings", "Recording", "record", "record_requests"]
