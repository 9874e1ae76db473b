"""Policy decision time per MoE layer, measured by replaying a short synthetic trace through the
policy with :func:`policies.evaluation.evaluate` (instant copies: only the policy's own calls and
the replay's bookkeeping are timed, so the figure is an upper bound of the decision cost)."""

from __future__ import annotations

import time

from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.traces.catalog import available
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec
from moe_offload_lab.traces.synthetic import SynthConfig, generate


def policy_trace(spec: ModelSpec, tokens: int, seed: int = 0) -> Trace:
    """A short synthetic trace for ``spec``: the model's bundled preset when there is one and the
    spec is the bundled shape, else the generator's defaults with gate lookahead (2 layers)."""
    if spec.name in available("trace"):
        cfg = SynthConfig.preset(spec.name)
        if not cfg.model_spec().mismatches(spec):
            return generate(cfg, tokens=tokens, seed=seed)
    cfg = SynthConfig(model=spec.name, name=f"{spec.name}-calibration", lookahead_distances=2,
                      model_overrides=spec_overrides(spec))
    return generate(cfg, tokens=tokens, seed=seed)


def spec_overrides(spec: ModelSpec) -> dict:
    """The fields of ``spec`` that differ from its bundled model of the same name."""
    from moe_offload_lab.traces.catalog import load_model

    base = load_model(spec.name).to_dict() if spec.name in available("model") else {}
    return {k: v for k, v in spec.to_dict().items() if base.get(k) != v and k != "name"}


def decision_seconds(policy_name: str, trace: Trace, capacity_fraction: float = 0.5,
                     batch: int = 1) -> dict[str, float]:
    """``{per_layer_s, layers, wall_s}``: wall time of a replay of ``trace`` over its
    step-layers, with a cache of ``capacity_fraction`` of the experts."""
    spec = trace.spec
    policy = build_policy(policy_name)
    capacity = max(spec.top_k * batch, int(capacity_fraction * spec.num_expert_keys))
    capacity = min(capacity, spec.num_expert_keys)
    t0 = time.perf_counter()
    result = evaluate(trace, policy, capacity, batch=batch, score_predictions=False)
    wall = time.perf_counter() - t0
    layers = result.steps * spec.num_moe_layers
    return {"per_layer_s": wall / max(layers, 1), "layers": layers, "wall_s": wall}
