"""Measured decision costs: a table of each component's time per MoE layer on one machine.

``moe-policy cost`` replays synthetic traces through every bundled (shape-free) policy and
measures, per model shape and batch size, each component's time per layer and the composed
policy's own work beyond its components (:mod:`policies.decision_timing`), and writes the table
(default ``conf/decision_costs/default.yaml``, with the machine, date and versions it was
measured with). A composed policy without a ``decision_cost`` in its config is charged from it:

- the table's shape nearest the run's model (distance in ``log E`` and ``log k``);
- per component, the seconds at each measured batch; predictors and planners were measured at
  horizons 1 and 3 and are interpolated linearly in the policy's horizon (extrapolated beyond 3
  with a non-negative slope); a component measured inside several policies gets the median;
- the components' sum plus the composed policy's own work, fitted as ``fixed_s + tokens *
  per_token_s`` through the measured batch sizes (least squares, both terms non-negative);
- except that a policy whose components and parameters match a measured whole policy exactly
  (every bundled one, unless a parameter is overridden) is charged that policy's own
  measurement (interpolated in the horizon the same way): components interact (a replacement
  rule does little under an admission rule that caches nothing), which a sum cannot see.

A component the table lacks (a plug-in not measured yet) keeps the figure its class declares;
one that measures itself (the ``learned`` predictor: its checkpoint's inference time, set on the
instance) keeps that. The run summary labels the result (:func:`cost_summary`):
``decision_cost_source`` is ``measured``, ``measured+declared`` (some components declared) or
``declared`` (the policy config types ``decision_cost: {where, fixed_s, per_token_s}`` by hand, or
no table was found). ``decision_cost: {table: PATH}`` in a policy config, or the environment
variable ``MOE_LAB_DECISION_COSTS``, selects another table.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec

ENV = "MOE_LAB_DECISION_COSTS"
KINDS = ("predictor", "planner", "replacement", "placement", "admission")
BY_HORIZON = ("predictor", "planner")  # kinds whose cost grows with the lookahead horizon
HORIZONS = (1, 3)
DEFAULT_MODELS = ("mixtral-8x7b", "qwen3-30b-a3b")
DEFAULT_BATCHES = (1, 32)
REGENERATE = "moe-policy cost"


def default_path() -> Path:
    """``$MOE_LAB_DECISION_COSTS``, else ``conf/decision_costs/default.yaml``."""
    from moe_offload_lab.traces.catalog import conf_dir

    return Path(os.environ.get(ENV) or conf_dir() / "decision_costs" / "default.yaml")


@dataclass
class CostTable:
    """Measured microseconds per MoE layer (see the module docstring for the lookup)."""

    shapes: dict[str, dict[str, int]]  # model -> {num_moe_layers, num_experts, top_k}
    batches: tuple[int, ...]
    # kind -> component id -> model -> {"b<B>": us} or, for BY_HORIZON kinds, {"h<H>": {...}}
    components: dict[str, dict[str, dict[str, Any]]]
    glue_us: dict[str, dict[str, float]]  # model -> {"b<B>": us}
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    # whole policies: fingerprint -> {"name": ..., model -> {"h<H>": {"b<B>": us}}}
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ---- lookup --------------------------------------------------------------------------------
    def shape_for(self, spec: ModelSpec) -> str:
        """The measured shape nearest ``spec`` (log distance in experts and top-k)."""
        def distance(model: str) -> float:
            s = self.shapes[model]
            return (abs(math.log(s["num_experts"] / spec.num_experts))
                    + abs(math.log(s["top_k"] / spec.top_k)))

        return min(self.shapes, key=distance)

    def component_us(self, kind: str, cid: str, model: str, horizon: int
                     ) -> dict[int, float] | None:
        """Microseconds per layer at each measured batch, or None when not measured."""
        entry = self.components.get(kind, {}).get(cid, {}).get(model)
        if entry is None:
            return None
        if kind not in BY_HORIZON:
            return _batches(entry)
        points = sorted((int(h[1:]), _batches(v)) for h, v in entry.items())
        return {b: _in_horizon([(h, v[b]) for h, v in points if b in v], horizon)
                for b in self.batches}

    def policy_us(self, fingerprint: str, model: str, horizon: int) -> dict[int, float] | None:
        """A whole policy's measured microseconds per layer at each batch (None: not measured
        with exactly these components and parameters)."""
        entry = self.policies.get(fingerprint, {}).get(model)
        if not entry:
            return None
        points = sorted((int(h[1:]), _batches(v)) for h, v in entry.items())
        return {b: _in_horizon([(h, v[b]) for h, v in points if b in v], horizon)
                for b in self.batches}

    def glue(self, model: str) -> dict[int, float]:
        """The composed policy's own microseconds per layer at each measured batch."""
        return _batches(self.glue_us.get(model, {}))

    # ---- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The YAML layout."""
        return {"provenance": self.provenance, "shapes": self.shapes,
                "batches": list(self.batches), "glue_us": self.glue_us,
                "components": self.components, "policies": self.policies}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> CostTable:
        """Validate a loaded YAML mapping."""
        try:
            shapes = {str(m): {k: int(s[k]) for k in ("num_moe_layers", "num_experts", "top_k")}
                      for m, s in data["shapes"].items()}
            batches = tuple(int(b) for b in data["batches"])
            components = {str(k): dict(v or {}) for k, v in (data.get("components") or {}).items()}
            glue = {str(m): dict(v) for m, v in (data.get("glue_us") or {}).items()}
            policies = {str(k): dict(v) for k, v in (data.get("policies") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"decision cost table {where}: malformed ({exc})") from None
        if not shapes or not batches:
            raise ConfigError(f"decision cost table {where}: no shapes or batches")
        return cls(shapes, batches, components, glue, dict(data.get("provenance") or {}),
                   str(where), policies)


def _batches(entry: Mapping[str, Any]) -> dict[int, float]:
    return {int(str(b)[1:]): float(us) for b, us in entry.items()}


def _in_horizon(points: list[tuple[int, float]], horizon: int) -> float:
    """Linear in the horizon through the measured points; a non-negative slope beyond them."""
    if not points:
        return 0.0
    if len(points) == 1:
        return points[0][1]
    (h0, c0), (h1, c1) = points[0], points[-1]
    slope = max(0.0, (c1 - c0) / (h1 - h0))
    return max(0.0, c0 + slope * (horizon - h0))


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> CostTable:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"decision cost table {path}: unreadable "
                          f"({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"decision cost table {path}: expected a mapping")
    return CostTable.from_dict(data, path)


def load_table(path: str | Path | None = None) -> CostTable | None:
    """The table at ``path`` (a missing file is a ConfigError), or the default one (None when
    there is none)."""
    target = Path(path) if path is not None else default_path()
    if not target.is_file():
        if path is not None:
            raise ConfigError(f"decision cost table {path}: no such file (write one with "
                              f"`{REGENERATE} --out {path}`)")
        return None
    return _load_cached(str(target), target.stat().st_mtime_ns)


# ---- what a composed policy is charged --------------------------------------------------------
@dataclass(frozen=True)
class ChargedCost:
    """A policy's decision cost with where its figures came from."""

    cost: DecisionCost
    source: str  # measured | measured+declared | declared
    declared: tuple[str, ...] = ()  # "kind:component" charged from class declarations
    table: str = ""


def charged_cost(components: Mapping[str, tuple[str, Any]], spec: ModelSpec, horizon: int,
                 table: CostTable | None) -> ChargedCost:
    """The cost of a composed policy's ``components`` (kind -> (id, instance)) on ``spec`` at
    ``horizon`` from ``table`` (see the module docstring)."""
    if table is None:
        return declared_charge(components)
    model = table.shape_for(spec)
    own_costs = any("decision_cost" in c.__dict__ for _, c in components.values())
    whole = None if own_costs else table.policy_us(fingerprint(components), model, horizon)
    if whole is not None:  # this very policy was measured: charge that, not the components' sum
        fixed_s, per_token_s = fit_line([(b, us * 1e-6) for b, us in sorted(whole.items())])
        return ChargedCost(DecisionCost("cpu", fixed_s, per_token_s), "measured", (), table.path)
    total = dict(table.glue(model))
    extra: list[DecisionCost] = []
    declared: list[str] = []
    for kind, (cid, component) in components.items():
        own = component.__dict__.get("decision_cost")  # measured by the component itself
        us = None if own is not None else table.component_us(kind, cid, model, horizon)
        if us is None:
            extra.append(own if own is not None else type(component).decision_cost)
            if own is None and _positive(type(component).decision_cost):
                declared.append(f"{kind}:{cid}")
            continue
        for batch in table.batches:
            total[batch] = total.get(batch, 0.0) + us.get(batch, 0.0)
    fixed_s, per_token_s = fit_line([(b, us * 1e-6) for b, us in sorted(total.items())])
    where = _declared_sum(extra).where if extra else "cpu"
    cost = _declared_sum([DecisionCost(where, fixed_s, per_token_s), *extra])
    source = "measured+declared" if declared else "measured"
    return ChargedCost(cost, source, tuple(declared), table.path)


def fingerprint(components: Mapping[str, tuple[str, Any]]) -> str:
    """A short hash of a policy's components and their parameters (defaults resolved): a whole
    policy's measurement is charged only to a policy that matches it exactly."""
    parts = {}
    for kind, (cid, component) in sorted(components.items()):
        params = getattr(component, "params", None)
        values = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
        parts[kind] = [cid, values]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def declared_charge(components: Mapping[str, tuple[str, Any]]) -> ChargedCost:
    """The sum of the components' declared figures (what is charged without a table)."""
    return ChargedCost(_declared_sum(c for _, c in components.values()), "declared", tuple(
        f"{k}:{cid}" for k, (cid, c) in components.items() if _positive(c.decision_cost)))


def _positive(cost: DecisionCost) -> bool:
    return cost.fixed_s > 0 or cost.per_token_s > 0


def _declared_sum(costs: Iterable[Any]) -> DecisionCost:
    total = DecisionCost("cpu", 0.0, 0.0)
    for item in costs:
        total = total + (item if isinstance(item, DecisionCost) else item.decision_cost)
    return total


def fit_line(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """``(fixed, per_token)`` of the least-squares line through ``(tokens, seconds)`` points,
    both kept non-negative."""
    if not points:
        return 0.0, 0.0
    if len(points) == 1:
        return max(points[0][1], 0.0), 0.0
    xs, ys = [float(x) for x, _ in points], [float(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var)
    fixed = my - slope * mx
    if fixed < 0:  # through the origin instead
        slope = max(0.0, sum(x * y for x, y in zip(xs, ys, strict=True))
                    / sum(x * x for x in xs))
        fixed = 0.0
    return fixed, slope


def cost_summary(policy: Any) -> dict[str, Any]:
    """The decision-cost keys of a run summary, for any policy: ``decision_cost_source``
    (measured | measured+declared | declared), ``decision_cost_fixed_us``,
    ``decision_cost_per_token_us``, ``decision_cost_where`` and the table used."""
    cost = policy.decision_cost
    charged = getattr(policy, "charged_cost", None)
    return {"decision_cost_source": charged.source if charged else "declared",
            "decision_cost_fixed_us": cost.fixed_s * 1e6,
            "decision_cost_per_token_us": cost.per_token_s * 1e6,
            "decision_cost_where": cost.where,
            "decision_cost_table": (charged.table if charged else "") or None,
            "decision_cost_declared": list(charged.declared) if charged else None}


# ---- measuring a table ------------------------------------------------------------------------
def _load() -> float | None:
    """The 1-minute load average (a busy machine inflates the figures), where the OS has one."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def provenance(command: str, settings: Mapping[str, Any], load_at_start: float | None = None
               ) -> dict[str, Any]:
    """Machine, date, versions and method of a measurement (called when it ends)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("moe-offload-lab", "numpy", "numba"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "machine": {"cpu": _cpu_name(), "logical_cpus": os.cpu_count(),
                    "platform": platform.platform(terse=True), "machine": platform.machine(),
                    "load_average_1min_at_start": load_at_start,
                    "load_average_1min_at_end": _load()},
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions,
        "command": command,
        "settings": dict(settings),
        "method": "per-component timers around the composed policy's calls during a replay "
                  "with instant copies (policies.decision_timing); glue = whole policy "
                  "(with-policy minus decision-replay wall time) minus its components; "
                  "medians over the bundled policies holding a component",
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _horizons(config: Any) -> tuple[int, ...]:
    """The horizons a policy is measured at: 1 and 3 when its predictor predicts."""
    return HORIZONS if config.predictor.get("name") != "none" else (config.horizon,)


def measure_table(policies: Sequence[str], models: Sequence[str] = DEFAULT_MODELS,
                  batches: Sequence[int] = DEFAULT_BATCHES, tokens: int = 1024,
                  batch_tokens: int = 4096, repeat: int = 2,
                  progress: Callable[[str], None] | None = None,
                  command: str = REGENERATE) -> CostTable:
    """Measure every component of ``policies`` (names or YAML paths) on each model shape
    (synthetic traces of the models' presets) and batch size."""
    from moe_offload_lab.policies.config import build_policy, component_id, load_policy_config
    from moe_offload_lab.policies.decision_timing import (
        Workload,
        component_seconds,
        policy_seconds,
        timer_overhead_s,
    )
    from moe_offload_lab.traces.catalog import load_model
    from moe_offload_lab.traces.synthetic import generate

    load_at_start = _load()
    configs = [load_policy_config(p) for p in policies]
    overhead = timer_overhead_s()
    samples: dict[tuple, list[float]] = {}
    glue: dict[tuple, list[float]] = {}
    wholes: dict[str, dict[str, Any]] = {}
    shapes = {}
    for model in models:
        spec = load_model(model)
        shapes[model] = {"num_moe_layers": spec.num_moe_layers,
                         "num_experts": spec.num_experts, "top_k": spec.top_k}
        for batch in batches:
            trace = generate(model, tokens=tokens if batch == 1 else batch_tokens, seed=1)
            work = Workload(trace, batch)
            for config in configs:
                for horizon in _horizons(config):
                    one = dataclasses.replace(config, horizon=horizon)
                    if progress:
                        progress(f"{model} batch {batch}: {config.name} (horizon {horizon})")
                    policy = build_policy(one)
                    whole = policy_seconds(policy, work, repeat)
                    parts = component_seconds(build_policy(one), work, repeat, overhead)
                    glue.setdefault((model, batch), []).append(whole - sum(parts.values()))
                    entry = wholes.setdefault(fingerprint(policy.components_by_kind()),
                                              {"name": config.name})
                    entry.setdefault(model, {}).setdefault(f"h{horizon}", {})[f"b{batch}"] = \
                        round(whole * 1e6, 3)
                    for kind, seconds in parts.items():
                        cid = component_id(getattr(one, kind))
                        key = (kind, cid, model, horizon if kind in BY_HORIZON else 0, batch)
                        samples.setdefault(key, []).append(seconds)
    components: dict[str, dict[str, dict[str, Any]]] = {}
    for (kind, cid, model, horizon, batch), values in sorted(samples.items()):
        entry = components.setdefault(kind, {}).setdefault(cid, {}).setdefault(model, {})
        if kind in BY_HORIZON:
            entry = entry.setdefault(f"h{horizon}", {})
        entry[f"b{batch}"] = round(statistics.median(values) * 1e6, 3)
    glue_us = {}
    for (model, batch), values in sorted(glue.items()):
        glue_us.setdefault(model, {})[f"b{batch}"] = round(max(statistics.median(values), 0.0)
                                                           * 1e6, 3)
    settings = {"policies": [c.name for c in configs], "models": list(models),
                "batches": list(batches), "tokens_batch_1": tokens,
                "tokens_larger_batches": batch_tokens, "repeat": repeat,
                "cache_fraction": 0.25, "horizons_of_predictors_and_planners": list(HORIZONS),
                "timer_overhead_us": round(overhead * 1e6, 4)}
    return CostTable(shapes, tuple(batches), components, glue_us,
                     provenance(command, settings, load_at_start), policies=wholes)


def merge(old: CostTable, new: CostTable) -> CostTable:
    """``old`` with ``new``'s components replacing or adding entries (same shapes and batches;
    the glue and provenance are the new measurement's)."""
    if old.shapes != new.shapes or old.batches != new.batches:
        raise ConfigError(f"decision cost table {old.path} was measured on other shapes or "
                          f"batches; regenerate it whole (`{REGENERATE}` without --policies)")
    components = {kind: dict(entries) for kind, entries in old.components.items()}
    for kind, entries in new.components.items():
        components.setdefault(kind, {}).update(entries)
    prov = dict(new.provenance)
    prov["merged_into"] = {"date": old.provenance.get("date"),
                           "command": old.provenance.get("command")}
    return CostTable(new.shapes, new.batches, components, new.glue_us, prov, old.path,
                     {**old.policies, **new.policies})


def write_table(table: CostTable, path: str | Path) -> Path:
    """Write the table as YAML (atomically), with a header saying how to regenerate it."""
    from moe_offload_lab.traces.atomic import write_text

    header = ("# Policy decision cost per MoE layer, microseconds, measured on the machine in "
              "`provenance`\n# (policies/cost_table.py explains the method and how a policy is "
              "charged from it).\n# Regenerate on the machine whose CPU runs the policy: "
              f"`{REGENERATE}` (writes conf/decision_costs/default.yaml;\n# --out PATH for "
              "another file, selected with MOE_LAB_DECISION_COSTS=PATH or a policy's "
              "decision_cost: {table: PATH}).\n")
    text = header + yaml.safe_dump(table.to_dict(), sort_keys=False, default_flow_style=None,
                                   width=100)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, text)


def format_table(table: CostTable) -> str:
    """The table as text: one row per component (per horizon for predictors and planners),
    microseconds per MoE layer per shape and batch."""
    columns = [(m, b) for m in table.shapes for b in table.batches]
    short = {m: m.split("-")[0] for m in table.shapes}
    head = f"{'component':<34}" + "".join(f"{short[m] + ' b' + str(b):>14}" for m, b in columns)
    lines = [f"decision cost per MoE layer, microseconds ({table.provenance.get('date', '?')}, "
             f"{table.provenance.get('machine', {}).get('cpu', '?')})", head, "-" * len(head)]

    def row(label: str, values: list[float | None]) -> str:
        return f"{label:<34}" + "".join("{:>14}".format("-" if v is None else f"{v:.2f}")
                                         for v in values)

    for kind in KINDS:
        for cid, entry in sorted(table.components.get(kind, {}).items()):
            horizons = sorted({int(h[1:]) for e in entry.values() for h in e}) \
                if kind in BY_HORIZON else [0]
            for h in horizons:
                label = f"{kind} {cid}" + (f" h{h}" if h else "")
                values = []
                for model, batch in columns:
                    got = entry.get(model, {})
                    got = got.get(f"h{h}", {}) if h else got
                    values.append(got.get(f"b{batch}"))
                lines.append(row(label, values))
    lines.append(row("composed policy's own work", [table.glue_us.get(m, {}).get(f"b{b}")
                                                    for m, b in columns]))
    if table.policies:
        lines.append("whole policies (charged to a policy with exactly these components):")
        for entry in sorted(table.policies.values(), key=lambda e: e["name"]):
            for h in sorted({int(h[1:]) for m in table.shapes for h in entry.get(m, {})}):
                lines.append(row(f"  {entry['name']} h{h}", [
                    entry.get(m, {}).get(f"h{h}", {}).get(f"b{b}") for m, b in columns]))
    return "\n".join(lines)


def print_progress(message: str) -> None:
    """A progress line on stderr."""
    print(f"  measuring {message}", file=sys.stderr, flush=True)
