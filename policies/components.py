"""The component catalogue: every predictor, planner, replacement, placement and admission rule
with its parameters, defaults, one line of doc and measured cost (``moe-policy components``),
and a composed policy with every parameter resolved (``moe-policy show``).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Mapping
from typing import Any

from moe_offload_lab.policies.config import PolicyConfig, plain
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.cost_table import BY_HORIZON, CostTable, charged_cost
from moe_offload_lab.policies.plugins import TARGET_KEY, PluginEntry
from moe_offload_lab.policies.registry import REGISTRIES, NoParams
from moe_offload_lab.traces.errors import MoeLabError

_PARAM_DOC = re.compile(r"``(\w+)``([^`:;]{0,24}):\s*(.+?)(?=;\s*``\w+``|$)")


def one_line(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    if not doc:
        return ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.search(r"(?<=[a-z0-9)`'\"])\.(\s|$)", text)
    return text[:match.start() + 1] if match else text


def param_docs(params_cls: type) -> dict[str, str]:
    """Per-parameter descriptions written ``name``: text; ... in a Params docstring."""
    text = " ".join((params_cls.__doc__ or "").split())
    docs = {}
    for match in _PARAM_DOC.finditer(text):
        lead = match.group(2).strip()
        docs[match.group(1)] = (f"{lead}: " if lead else "") + match.group(3).strip().rstrip(".;")
    return docs


def describe(cls: type, kind: str, name: str, source: str) -> dict[str, Any]:
    """One component as a plain mapping (JSON-safe)."""
    params_cls = getattr(cls, "Params", NoParams)
    hints = typing.get_type_hints(params_cls)
    docs = param_docs(params_cls)
    params = []
    for f in dataclasses.fields(params_cls):
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        params.append({"name": f.name, "type": _type_name(hints.get(f.name, f.type)),
                       "default": plain(default), "doc": docs.get(f.name, "")})
    flags = [flag for flag, on in (
        ("upper bound", getattr(cls, "is_oracle", False)),
        ("learns online", getattr(cls, "learns", False) and kind == "predictor"),
        ("reads lookahead", getattr(cls, "reads_lookahead", False)),
        ("uses predictions", getattr(cls, "uses_prediction", False) and kind != "planner"),
    ) if on]
    declared = getattr(cls, "decision_cost", None)
    declared_us = None if not isinstance(declared, DecisionCost) else {
        "b1": round(declared.seconds(1) * 1e6, 3), "b32": round(declared.seconds(32) * 1e6, 3)}
    return {"kind": kind, "name": name, "doc": _doc(cls), "declared_cost_us": declared_us,
            "params_doc": ("" if params_cls is NoParams or set(docs) >= {p["name"] for p in params}
                           else one_line(params_cls.__doc__)),
            "params": params, "flags": flags, "source": source,
            "class": f"{cls.__module__}.{cls.__qualname__}"}


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _doc(cls: type) -> str:
    """The class's one line, or its module's where the class defers to it."""
    doc = one_line(cls.__doc__)
    if "module docstring" in doc:
        module = sys.modules.get(cls.__module__)
        return one_line(getattr(module, "__doc__", None)) or doc
    return doc


def catalogue(kinds: tuple[str, ...] | None = None, table: CostTable | None = None
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every component of ``kinds`` (built in, then entry-point plug-ins), and a line for each
    plug-in that failed to load or is shadowed by a built-in name."""
    rows, problems = [], []
    for kind, registry in REGISTRIES.items():
        if kinds and kind not in kinds:
            continue
        builtin = registry.names()
        for name in builtin:
            rows.append(describe(registry.get(name), kind, name, "built-in"))
        for name, entry in sorted(registry.plugin_entries().items()):
            if name in builtin:
                problems.append(f"{kind} {name!r} of {entry.where} is shadowed by the built-in "
                                f"{kind} of that name")
                continue
            try:
                rows.append(describe(registry.get(name), kind, name, _entry_source(entry)))
            except MoeLabError as exc:
                problems.append(str(exc))
    if table is not None:
        for row in rows:
            row["cost_us"] = _measured(table, row["kind"], row["name"])
    return rows, problems


def _entry_source(entry: PluginEntry) -> str:
    return f"entry point: {entry.where}"


def _measured(table: CostTable, kind: str, name: str) -> dict[str, dict[str, float]] | None:
    """``{model: {"b1": us, ...}}`` at horizon 1, or None when the table lacks it."""
    out = {}
    for model in table.shapes:
        us = table.component_us(kind, name, model, 1)
        if us is not None:
            out[model] = {f"b{b}": round(v, 3) for b, v in sorted(us.items())}
    return out or None


def format_catalogue(rows: list[dict[str, Any]], table: CostTable | None) -> str:
    """The human-readable catalogue."""
    lines = []
    for kind in REGISTRIES:
        part = [r for r in rows if r["kind"] == kind]
        if not part:
            continue
        lines.append(f"{kind} components ({kind}: {{name: NAME, <parameters>}}):")
        for row in part:
            tags = f" [{', '.join(row['flags'])}]" if row["flags"] else ""
            lines.append(f"  {row['name']}{tags}: {row['doc']}")
            if row["source"] != "built-in":
                lines.append(f"      from {row['source']}")
            if row["params_doc"]:
                lines.append(f"      {row['params_doc']}")
            for p in row["params"]:
                doc = f"  {p['doc']}" if p["doc"] else ""
                lines.append(f"      {p['name']}: {p['type']} = {p['default']!r}{doc}")
            cost = row.get("cost_us")
            if cost:
                at = " at horizon 1" if kind in BY_HORIZON else ""
                shown = "; ".join(f"{m} " + ", ".join(f"{b} {v:.3g}" for b, v in c.items())
                                  for m, c in cost.items())
                lines.append(f"      measured us/layer{at}: {shown}")
            if row["declared_cost_us"]:
                d = row["declared_cost_us"]
                lines.append(f"      declared by the class: b1 {d['b1']:.3g}, b32 {d['b32']:.3g}")
            elif table is not None:
                lines.append("      not in the cost table (charged its declared cost)")
        lines.append("")
    if table is not None:
        lines.append(f"costs: {table.path} (measured {table.provenance.get('date', '?')} on "
                     f"{table.provenance.get('machine', {}).get('cpu', '?')}); b1, b32: batch "
                     f"of 1 and 32 tokens")
    lines.append(f"a class of your own: {{{TARGET_KEY}: package.module.Class, <parameters>}}; "
                 f"installed plug-ins register through the entry-point groups "
                 f"moe_offload_lab.predictors, .planners, .replacements, .placements, "
                 f".admissions")
    return "\n".join(lines)


def resolved(policy: Any) -> dict[str, Any]:
    """A composed policy's config with every component parameter filled in (defaults too)."""
    config: PolicyConfig = policy.config
    out = config.to_dict()
    for kind in REGISTRIES:
        part: Mapping[str, Any] = getattr(config, kind)
        component = getattr(policy, kind)
        head = ({TARGET_KEY: part[TARGET_KEY]} if TARGET_KEY in part
                else {"name": part["name"]})
        params = component.params
        values = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
        out[kind] = plain({**head, **values})
    if out.get("decision_cost") is None:
        out.pop("decision_cost", None)
    return out


def cost_lines(policy: Any, table: CostTable | None) -> list[str]:
    """What the policy is charged per MoE layer on each shape of ``table``."""
    from moe_offload_lab.traces.catalog import load_model

    config = policy.config
    if config.decision_cost is not None and "table" not in config.decision_cost:
        cost = policy.decision_cost
        return [f"decision cost (declared in the config): {cost.fixed_s * 1e6:.3g} us + "
                f"{cost.per_token_s * 1e6:.3g} us/token on the {cost.where}"]
    if table is None:
        cost = policy.decision_cost
        return [f"decision cost (declared by the components; no cost table found): "
                f"{cost.fixed_s * 1e6:.3g} us + {cost.per_token_s * 1e6:.3g} us/token"]
    components = policy.components_by_kind()
    lines = [f"decision cost per MoE layer at horizon {config.horizon}, from {table.path}:"]
    for model in table.shapes:
        charged = charged_cost(components, load_model(model), config.horizon, table)
        c = charged.cost
        note = f" (declared: {', '.join(charged.declared)})" if charged.declared else ""
        lines.append(f"  {model} shape: {c.fixed_s * 1e6:.3g} us + {c.per_token_s * 1e6:.3g} "
                     f"us/token = {c.seconds(1) * 1e6:.3g} us at batch 1, "
                     f"{c.seconds(32) * 1e6:.3g} us at 32 [{charged.source}]{note}")
    return lines
