"""One Optuna trial: sample the space, compose with Hydra's compose API, simulate.

Single-objective studies with ``prune.prefix`` first simulate that fraction of ``trace.tokens``,
report its value as the intermediate value and let the pruner stop the trial; survivors then run
the full trace. A combination the simulator refuses (e.g. a per-layer quota larger than the
cache) is recorded as pruned with its message in the ``error`` user attribute.
"""

from __future__ import annotations

import math
from typing import Any

from moe_offload_lab.sim.tune.space import Space
from moe_offload_lab.sim.tune.stale import HEARTBEAT_ATTR, OWNER_ATTR
from moe_offload_lab.traces.errors import ConfigError, MoeLabError

_OWN_ATTRS = (OWNER_ATTR, HEARTBEAT_ATTR, "slurm_task", "overrides")  # not copied from a twin


def evaluate(overrides: list[str], objectives: tuple[str, ...] | list[str]) -> tuple[list[float],
                                                                                      dict]:
    """Simulate the composed config of ``overrides``; the objective values and the summary."""
    from moe_offload_lab.sim.cli import checked_run_config, quiet_log
    from moe_offload_lab.sim.run import simulate
    from moe_offload_lab.sim.trace_cache import shared

    # a worker's trials share their synthetic traces (the prefix's and the full one) and keep
    # no event rows (the summary needs none)
    summary = simulate(checked_run_config(quiet_log(overrides, "summary")), shared()).summary
    values = [summary.get(o) for o in objectives]
    bad = [o for o, v in zip(objectives, values, strict=False) if v is None or not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{', '.join(bad)} undefined for this run (e.g. a trace with no "
                          f"decode tokens); use a longer trace.tokens")
    return [float(v) for v in values], summary


def _tokens(overrides: list[str]) -> int | None:
    from moe_offload_lab.sim.cli import compose

    cfg = compose(overrides)
    if cfg.trace.get("path"):
        return None
    return int(cfg.trace.tokens)


def _prefix_value(overrides: list[str], objectives: Any) -> float | None:
    """The objective on the trace prefix; None when the prefix is too short to define it."""
    try:
        (value,), _ = evaluate(overrides, objectives)
    except ConfigError as exc:
        if "undefined" in str(exc):
            return None
        raise
    return value


def _earlier(trial: Any, overrides: list[str]) -> Any:
    """A complete trial of the study with exactly these overrides (simulation is
    deterministic, so its values stand), or None."""
    from optuna.trial import TrialState

    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.user_attrs.get("overrides") == overrides:
            return other
    return None


class Objective:
    """The callable handed to ``study.optimize`` for a space."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: Any) -> float | list[float]:
        import optuna

        values = self.space.sample(trial)
        overrides = self.space.overrides(values)
        trial.set_user_attr("overrides", overrides)
        earlier = _earlier(trial, overrides)
        if earlier is not None:  # the same config again (e.g. a policy without parameters)
            for key, value in earlier.user_attrs.items():
                if key not in _OWN_ATTRS:
                    trial.set_user_attr(key, value)
            trial.set_user_attr("same_as", earlier.number)
            values = list(earlier.values)
            return values[0] if len(values) == 1 else values
        try:
            if not self.space.multi and self.space.prune.prefix:
                tokens = _tokens(overrides)
                if tokens is not None and tokens >= 2:
                    short = max(1, int(tokens * self.space.prune.prefix))
                    value = _prefix_value([*overrides, f"trace.tokens={short}"],
                                          self.space.objectives)
                    if value is not None:
                        trial.report(value, short)
                    if value is not None and trial.should_prune():
                        raise optuna.TrialPruned(f"prefix of {short} tokens: {value:.6g}")
            result, summary = evaluate(overrides, self.space.objectives)
        except MoeLabError as exc:
            trial.set_user_attr("error", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        for key in ("tpot_ms_mean", "tpot_ms_p99", "step_latency_ms_mean", "cache_bytes",
                    "capacity_slots", "tokens_per_s", "hit_rate"):
            if key in summary:
                trial.set_user_attr(key, float(summary[key]))
        return result[0] if len(result) == 1 else result
