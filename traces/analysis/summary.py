"""Plain-text rendering of :func:`traces.analysis.report.compute_stats` for ``moe-trace stats``."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(label: str, block: dict[str, Any], digits: int = 3) -> str:
    values = block["per_layer"]
    shown = " ".join(_fmt(v, 2) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    return f"  {label:<34} mean {_fmt(block['mean'], digits):>7}   per layer: {shown}"


def format_stats(stats: dict[str, Any]) -> str:
    """A readable multi-line summary of a stats dict (the JSON layout of ``moe-trace stats``)."""
    t = stats["trace"]
    mi = stats["mutual_information_bits"]
    lines = [
        f"trace: {t['model']}, {t['tokens']} tokens ({t['prefill_tokens']} prefill, "
        f"{t['decode_tokens']} decode) in {t['requests']} requests; {t['moe_layers']} MoE layers "
        f"x {t['experts']} experts, top-{t['top_k']}; lookahead distances "
        f"{t['lookahead_distances'] or 'none'}",
        "",
        "routing (bits; X = the expert of one top-k slot)",
        _row(f"entropy H(X) (max {stats['entropy_bits']['max']:.2f})", stats["entropy_bits"]),
        _row("power-law exponent alpha", stats["power_law_alpha"]),
        _row("traffic share of top half", stats["traffic"]["top_half_share"]),
        _row("experts for 95% of traffic", stats["traffic"]["experts_for_95pct"]),
    ]
    for d, block in mi["cross_layer"].items():
        lines.append(_row(f"mutual information l, l+{d}", block))
    for d, block in mi["cross_layer_top1"].items():
        lines.append(_row(f"mutual information top-1 l, l+{d}", block))
    lines.append(_row("mutual information adjacent tokens", mi["adjacent_token"]))
    for c, block in stats["conditional_entropy_bits"].items():
        lines.append(
            _row(f"H(X_l | previous {c} layers)", block)
            + f"   exploitable {_fmt(block['exploitable_bits'])}"
        )
    lines += [
        _row("adjacent-token reuse / chance", stats["adjacent_reuse_ratio"]),
        "",
        "locality and caching (one token at a time; keys are (layer, expert))",
        "  reuse distance in tokens: mean {mean}, p50 {p50}, p90 {p90}".format(
            **{k: _fmt(v, 1) for k, v in stats["reuse_distance_tokens"].items()}
        ),
        "  LRU hit ratio by cache fraction:    "
        + "  ".join(
            f"{f}: {_fmt(v)}"
            for f, v in stats["lru_hit_ratio"].items()
            if f in ("0.1", "0.25", "0.5", "0.75", "1")
        ),
        "  Belady hit ratio by cache fraction: "
        + "  ".join(f"{f}: {_fmt(v)}" for f, v in stats["belady_hit_ratio"].items()),
    ]
    if stats["lookahead_accuracy"]:
        lines += ["", "lookahead accuracy (share of the true top-k the prediction names)"]
        for d, block in stats["lookahead_accuracy"].items():
            lines.append(_row(f"distance {d}", block))
    return "\n".join(lines)
