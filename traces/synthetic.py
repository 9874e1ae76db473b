"""Synthetic routing traces (the public entry point; the generator lives in :mod:`traces.synth`).

``generate(preset, tokens=..., seed=...)`` routes tokens with a hidden-state model of a MoE
transformer: each token carries a latent state that drifts across layers and, within a request,
across tokens; every router (and every lookahead router, and the feature columns) reads that state.
:mod:`traces.synth.generate` describes the model, ``conf/trace/`` holds one preset per model and
``traces/README.md`` the calibration of each against published figures.
"""

from __future__ import annotations

from moe_offload_lab.traces.synth import LengthDist, SynthConfig, generate, presets

__all__ = ["LengthDist", "SynthConfig", "generate", "presets"]
