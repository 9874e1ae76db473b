"""The synthetic routing generator: a hidden-state model of a MoE transformer.

- :mod:`traces.synth.config`: :class:`SynthConfig` (a preset) and :class:`LengthDist`;
- :mod:`traces.synth.structure`: the "model" a preset stands for (router rows, biases, dynamics);
- :mod:`traces.synth.kernels`: the compiled routing kernels;
- :mod:`traces.synth.generate`: :func:`generate` and the model's description.
"""

from __future__ import annotations

from moe_offload_lab.traces.synth.config import LengthDist, SynthConfig, presets
from moe_offload_lab.traces.synth.generate import generate

__all__ = ["LengthDist", "SynthConfig", "generate", "presets"]
