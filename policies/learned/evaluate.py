"""Offline evaluation of learned and heuristic predictors on held-out requests.

Every predictor is scored per token (batch 1) on the same test examples (token, source layer
``l``), per distance ``d`` and per source layer:

- ``precision`` / ``recall``: experts scored >= ``threshold`` against the experts the token
  really uses at layer ``l + d``;
- ``topk_acc``: the share of the token's true top-k found among the predictor's k best
  (positive) scores;
- ``ece``: expected calibration error of the scores over all (example, expert) cells, with the
  reliability curve (``bins`` equal-width bins: mean score, observed frequency, count).

Targets beyond the last layer (next step) are not scored. Heuristic predictors
(``policies.predictors``: history, gate-lookahead, popularity) are driven through their own
Predictor interface at batch 1: first over the TRAINING requests (``observe`` only, so the online
learners warm up on exactly the data the learned models saw; popularity counts them and
freezes), then over the test requests, where they keep learning online as they would in a run.

Cross-trace transfer: a checkpoint trained on one trace is scored on the test requests of
another trace of the same shape (``transfer = True`` in the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from moe_offload_lab.policies.learned.data import Examples, build_examples
from moe_offload_lab.traces.atomic import atomic_path, write_text
from moe_offload_lab.traces.format import Trace

METRICS = ("precision", "recall", "topk_acc", "ece")


def learned_probs(runner: Any, examples: Examples, batch: int = 4096) -> np.ndarray:
    """Per-example confidences [N, h, E] of a learned model (a Runner)."""
    s = runner.shape
    out = np.zeros((len(examples), s.horizon, s.num_experts), dtype=np.float32)
    for layer in np.unique(examples.layer).tolist():
        idx = np.flatnonzero(examples.layer == layer)
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            feats = None if examples.features is None else examples.features[chunk]
            out[chunk] = runner.probs(layer, examples.history[chunk], feats).numpy()
    return out


def heuristic_probs(trace: Trace, train_rows: np.ndarray, test_rows: np.ndarray,
                    config: dict[str, Any] | str, horizon: int) -> np.ndarray:
    """Scores [len(test_rows) * L, h, E] of a registered heuristic predictor (see module doc)."""
    from moe_offload_lab.policies.cache import SlotCache
    from moe_offload_lab.policies.context import LayerContext
    from moe_offload_lab.policies.registry import PREDICTORS

    spec = trace.spec
    n_layers, n_exp, k = spec.num_moe_layers, spec.num_experts, spec.top_k
    if isinstance(config, str):
        config = {"name": config}
    config = dict(config)
    if config["name"] == "popularity":
        config.setdefault("source", "warmup")
        config.setdefault("warmup_tokens", max(1, len(train_rows)))
    pred = PREDICTORS.build(config)
    pred.reset(spec, horizon, trace)
    ctx = LayerContext(spec, SlotCache(max(k, 1), n_exp, n_layers))
    ids = trace.expert_ids.astype(np.int64)  # [T, L, k]
    gates = trace.gate_weights
    out = np.zeros((len(test_rows) * n_layers, horizon, n_exp), dtype=np.float32)
    ones = [1] * k
    step = 0
    for scoring, rows in ((False, train_rows), (True, test_rows)):
        for i, t in enumerate(rows.tolist()):
            ctx.begin_step(step, trace.request_id[t:t + 1], trace.phase[t:t + 1],
                           np.array([t]))
            pred.begin_step(ctx)
            for layer in range(n_layers):
                routing = ids[t:t + 1, layer]  # [1, k]
                experts = sorted(routing[0].tolist())
                look = {d: a[t:t + 1, layer].astype(np.int64) for d, a in trace.lookahead.items()}
                ctx.set_layer(layer, experts, ones, routing=routing, gates=gates[t:t + 1, layer],
                              lookahead=look)
                if pred.learns:
                    pred.observe(ctx)
                if scoring:
                    out[i * n_layers + layer] = pred.predict(ctx).dense()[:horizon]
            step += 1
    return out


def score(probs: np.ndarray, examples: Examples, top_k: int, threshold: float = 0.5,
          bins: int = 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Metric rows per (distance, source layer | 'all') and reliability rows per distance."""
    rows, reliability = [], []
    n_layers = int(examples.layer.max()) + 1 if len(examples) else 0
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i in range(probs.shape[1]):
        for group in ["all", *range(n_layers)]:
            sel = examples.mask[:, i] if group == "all" else \
                examples.mask[:, i] & (examples.layer == group)
            if not sel.any():
                continue
            p = probs[sel, i]  # [n, E]
            y = examples.targets[sel, i]  # [n, E]
            hit = p >= threshold
            tp = float((hit & y).sum())
            top = np.argsort(-p, axis=1, kind="stable")[:, :top_k]  # [n, k]
            # only experts the predictor actually scored count (no credit for zero-score ties)
            found = (np.take_along_axis(y, top, 1) & (np.take_along_axis(p, top, 1) > 0)).sum()
            which = np.clip(np.digitize(p.ravel(), edges[1:-1]), 0, bins - 1)
            count = np.bincount(which, minlength=bins)
            conf = np.bincount(which, weights=p.ravel(), minlength=bins)
            freq = np.bincount(which, weights=y.ravel().astype(np.float64), minlength=bins)
            nz = count > 0
            ece = float((np.abs(conf[nz] - freq[nz])).sum() / count.sum())
            rows.append({"distance": i + 1, "layer": group,
                         "precision": tp / max(float(hit.sum()), 1.0),
                         "recall": tp / max(float(y.sum()), 1.0),
                         "topk_acc": float(found) / max(float(y.sum()), 1.0),
                         "ece": ece, "examples": int(sel.sum())})
            if group == "all":
                for b in np.flatnonzero(nz).tolist():
                    reliability.append({"distance": i + 1, "bin": b,
                                        "bin_lo": float(edges[b]), "bin_hi": float(edges[b + 1]),
                                        "mean_score": float(conf[b] / count[b]),
                                        "frequency": float(freq[b] / count[b]),
                                        "count": int(count[b])})
    return rows, reliability


def evaluate_predictors(trace: Trace, train_rows: np.ndarray, test_rows: np.ndarray,
                        learned: dict[str, tuple[Any, dict[str, Any]]],
                        heuristics: Sequence[dict[str, Any] | str], horizon: int,
                        threshold: float = 0.5, bins: int = 10,
                        progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table and reliability curves. ``learned``: name -> (Runner, info) where
    info has ``inputs``, ``transfer`` and ``cost`` (the checkpoint's measured seconds)."""
    from tqdm import tqdm

    table, curves = [], []
    cache: dict[int, Examples] = {}
    jobs = [("learned", name, value) for name, value in learned.items()] + \
        [("heuristic", h if isinstance(h, str) else h["name"], h) for h in heuristics]
    for family, name, value in tqdm(jobs, desc="evaluate", disable=not progress, leave=False):
        if family == "learned":
            runner, info = value
            context = runner.shape.context
            ex = cache.get(context)
            if ex is None:
                ex = cache[context] = build_examples(trace, test_rows, context, horizon)
            probs = learned_probs(runner, ex)[:, :horizon]
            if probs.shape[1] < horizon:
                pad = np.zeros((len(ex), horizon - probs.shape[1], probs.shape[2]), np.float32)
                probs = np.concatenate([probs, pad], 1)
            extra = {"family": "learned", "inputs": info.get("inputs", ""),
                     "transfer": bool(info.get("transfer", False))}
        else:
            ex = cache.get(1)
            if ex is None:
                ex = cache[1] = build_examples(trace, test_rows, 1, horizon)
            probs = heuristic_probs(trace, train_rows, test_rows, value, horizon)
            extra = {"family": "heuristic", "inputs": "routing/lookahead", "transfer": False}
        rows, rel = score(probs, ex, trace.spec.top_k, threshold, bins)
        table += [{"predictor": name, **extra, **r} for r in rows]
        curves += [{"predictor": name, **r} for r in rel]
    return pd.DataFrame(table), pd.DataFrame(curves)


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of ``df`` (no extra dependency)."""
    def fmt(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_outputs(table: pd.DataFrame, curves: pd.DataFrame, out: str | Path,
                  figure: bool = True) -> list[Path]:
    """eval.csv, eval.md (the 'all layers' rows), reliability.csv and eval.png, atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "eval.csv", out / "eval.md", out / "reliability.csv"]
    write_text(paths[0], table.to_csv(index=False))
    summary = table[table["layer"] == "all"].drop(columns=["layer"])
    write_text(paths[1], markdown(summary))
    write_text(paths[2], curves.to_csv(index=False))
    if figure and len(summary):
        paths.append(plot(summary, curves, out / "eval.png"))
    return paths


def plot(summary: pd.DataFrame, curves: pd.DataFrame, path: Path) -> Path:
    """Top-k accuracy and recall per distance (bars, one hue per predictor) and the
    reliability curves at distance 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, metric in zip(axes[:2], ("topk_acc", "recall"), strict=True):
        sns.barplot(data=summary, x="distance", y=metric, hue="predictor", ax=ax)
        ax.set_ylim(0, 1)
        ax.set_title(f"{metric} per lookahead distance (held-out requests)")
        ax.legend(fontsize=7, ncol=2)
    d1 = curves[curves["distance"] == 1] if len(curves) else curves
    if len(d1):
        sns.lineplot(data=d1, x="mean_score", y="frequency", hue="predictor", marker="o",
                     ax=axes[2], legend="brief")
        axes[2].legend(fontsize=6, ncol=2)
    axes[2].plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    axes[2].set_title("reliability at distance 1")
    axes[2].set_xlim(0, 1)
    axes[2].set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
