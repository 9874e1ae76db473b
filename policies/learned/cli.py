"""``moe-train``: train and evaluate learned expert predictors (a Hydra app over conf/train).

    moe-train [OVERRIDES]              train one predictor (predictor=<conf/train/predictor name>)
    moe-train evaluate [OVERRIDES]     compare checkpoints and the heuristic predictors
    moe-train info [OVERRIDES]         Prophet's information split per model (entropy,
                                       exploitable bits, the part from history, consecutive MI)
    moe-train cache                    list the checkpoints ``checkpoint: auto`` trained and cached

Training writes ``<out>/model.pt`` and ``<out>/model.json`` (default
``outputs/train/<predictor name>/``; an ``out`` ending in ``.pt`` names the file itself, with its
``.json`` beside it), atomically, and prints the held-out test metrics and the
measured inference cost. ``evaluate`` scores every checkpoint of ``eval.checkpoints`` (default:
every ``outputs/train/*/model.pt``) and ``eval.heuristics`` on the test requests of the trace
selected by ``trace.*`` (a different trace of the same shape = cross-trace transfer) and writes
``eval.csv``, ``eval.md``, ``reliability.csv`` and ``eval.png`` into ``eval.out``.
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.catalog import conf_dir
from moe_offload_lab.traces.errors import ConfigError, run_command

from moe_offload_lab import version_line

PROG = "moe-train"


def compose(overrides: Sequence[str]) -> dict[str, Any]:
    """The composed ``conf/train`` config as a plain dict (errors -> ConfigError)."""
    from moe_offload_lab.traces.hydra_compose import compose_config
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    folder = conf_dir() / "train"
    if not folder.is_dir():
        raise ConfigError(f"training configuration folder not found: {folder}")
    known = sorted(p.stem for p in (folder / "predictor").glob("*.yaml"))
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "predictor" and value not in known:
            raise ConfigError(f"unknown predictor {value!r}; available: {', '.join(known)}")
    cfg = compose_config(folder, overrides)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


def _trace(cfg: dict[str, Any]):  # noqa: ANN202
    from moe_offload_lab.policies.learned.data import load_traces

    t = cfg["trace"]
    return load_traces(list(t.get("paths") or []), t.get("bundled"), t.get("preset"),
                       int(t.get("tokens", 4000)), int(t.get("seed", 0)))


def _split(cfg: dict[str, Any], trace: Any):  # noqa: ANN202
    from moe_offload_lab.policies.learned.data import split_by_request

    s = cfg["split"]
    return split_by_request(trace, float(s["val"]), float(s["test"]), int(s["seed"]))


def train(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train the configured predictor, write its checkpoint; returns the metadata."""
    from moe_offload_lab.policies.learned import checkpoint

    out = _checkpoint_path(cfg)  # checked before training, not after it
    trace, provenance = _trace(cfg)
    model, meta = train_on(trace, provenance, cfg)
    checkpoint.save(out, model, meta)
    print(_report(meta["name"], out, meta))
    return meta


def train_on(trace: Any, provenance: dict[str, Any], cfg: dict[str, Any],
             score_test: bool = True) -> tuple[Any, dict]:
    """Train the predictor of the composed config ``cfg`` on ``trace`` (split by request), score
    it on the held-out requests (unless ``score_test`` is False) and measure its cost; returns
    the model and its metadata (the checkpoint is not written). Shared by ``moe-train`` and the
    auto-trained checkpoints of :mod:`policies.learned.autotrain`."""
    import torch
    from moe_offload_lab.policies.learned import timing
    from moe_offload_lab.policies.learned.data import build_examples, fingerprint
    from moe_offload_lab.policies.learned.evaluate import learned_probs, score
    from moe_offload_lab.policies.learned.models import Shape, build_model
    from moe_offload_lab.policies.learned.runner import Runner
    from moe_offload_lab.policies.learned.train import TrainParams, seed_all, train_model

    pcfg = dict(cfg["predictor"])
    name, kind = pcfg.pop("name", None), pcfg.pop("kind", None)
    if not name or not kind:
        raise ConfigError("predictor config needs name and kind")
    router_path = pcfg.pop("router_weights", None)
    spec = trace.spec
    context, horizon = int(cfg["context"]), int(cfg["horizon"])
    feature_dim = 0 if trace.features is None else int(trace.features.shape[2])
    shape = Shape(spec.num_moe_layers, spec.num_experts, spec.top_k, horizon, context,
                  feature_dim)
    seed_all(int(cfg["train"].get("seed", 0)))
    model = build_model(kind, shape, **pcfg)
    if router_path:
        if not hasattr(model, "set_router_weights"):
            raise ConfigError(f"predictor {kind!r} takes no router_weights")
        if not Path(router_path).is_file():
            raise ConfigError(f"router weights not found: {router_path}")
        model.set_router_weights(np.load(router_path))
    split = _split(cfg, trace)
    train_ex = build_examples(trace, split.train_rows, context, horizon)
    val_ex = build_examples(trace, split.val_rows, context, horizon)
    test_ex = build_examples(trace, split.test_rows, context, horizon)
    try:
        params = TrainParams(**cfg["train"])
    except TypeError as exc:
        raise ConfigError(f"train: {exc}") from None
    history = train_model(model, train_ex, val_ex, params, progress=bool(cfg.get("progress")))
    rows = []
    if score_test and len(test_ex):
        rows, _ = score(learned_probs(Runner(model), test_ex), test_ex, spec.top_k)
    c = cfg["cost"]
    batches = [int(b) for b in c["batches"]]
    cost: dict[str, Any] = {"where": c["where"],
                            "cpu": timing.measure_cpu(model, batches, int(c["repeats"]),
                                                      int(c["warmup"]))}
    if str(c["device"]).startswith("cuda"):
        if torch.cuda.is_available():
            cost["cuda"] = timing.measure_cuda(model, batches, int(c["repeats"]),
                                               int(c["warmup"]), bool(c["graphs"]), c["device"])
        else:
            print(f"{PROG}: note: CUDA is not available; GPU timing skipped", file=sys.stderr)
    meta = {
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": spec.to_dict(),
        "trace": {**provenance, "fingerprint": fingerprint(trace), "tokens": trace.num_tokens,
                  "split": dict(cfg["split"]),
                  "train_requests": split.train_requests.tolist(),
                  "val_requests": split.val_requests.tolist(),
                  "test_requests": split.test_requests.tolist()},
        "train": {"params": dict(cfg["train"]), **history,
                  "examples": {"train": len(train_ex), "val": len(val_ex),
                               "test": len(test_ex)}},
        "metrics": {"test": rows},
        "cost": cost,
        "versions": {"torch": torch.__version__},
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return model, meta


def _checkpoint_path(cfg: dict[str, Any]) -> Path:
    """``out`` as the checkpoint file (``out`` itself when it ends in .pt), checked writable."""
    from moe_offload_lab.traces.atomic import check_output_file

    out = Path(str(cfg["out"]))
    out = out if out.suffix == ".pt" else out / "model.pt"
    return check_output_file(out, "out")


def _report(name: str, out: Path, meta: dict[str, Any]) -> str:
    t, cpu = meta["train"], meta["cost"]["cpu"]
    lines = [f"{name}: {meta['parameters']} parameters, {t['epochs_run']} epochs "
             f"(best {t['best_epoch']}, val loss {t['best_val_loss']:.4f}), "
             f"{t['seconds']:.1f} s -> {out}",
             "distance  precision  recall  topk_acc  ece    (held-out requests, all layers)"]
    for r in meta["metrics"]["test"]:
        if r["layer"] == "all":
            lines.append(f"{r['distance']:>8}  {r['precision']:9.3f}  {r['recall']:6.3f}  "
                         f"{r['topk_acc']:8.3f}  {r['ece']:.3f}")
    b = cpu["batch_s"]
    lines.append(f"cpu cost per call: batch 1 {b['1'] * 1e6:.0f} us, batch 32 "
                 f"{b.get('32', float('nan')) * 1e6:.0f} us -> DecisionCost("
                 f"{meta['cost']['where']!r}, fixed_s={cpu['fixed_s']:.3g}, "
                 f"per_token_s={cpu['per_token_s']:.3g})")
    return "\n".join(lines)


def evaluate(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """Score checkpoints and heuristics on the test requests; write the outputs."""
    from moe_offload_lab.policies.learned import checkpoint
    from moe_offload_lab.policies.learned.data import fingerprint
    from moe_offload_lab.policies.learned.evaluate import evaluate_predictors, write_outputs
    from moe_offload_lab.policies.learned.runner import Runner

    e = cfg["eval"]
    from moe_offload_lab.traces.atomic import check_output_folder

    check_output_folder(str(e["out"]), "eval.out")
    paths = [str(p) for p in (e.get("checkpoints") or [])]
    if not paths:
        paths = sorted(str(p) for p in Path("outputs/train").glob("*/model.pt"))
    if not paths:
        raise ConfigError("no checkpoints to evaluate: train some with moe-train or pass "
                          "eval.checkpoints=[PATH,...]")
    trace, _ = _trace(cfg)
    split = _split(cfg, trace)
    spec, fp = trace.spec, fingerprint(trace)
    learned: dict[str, tuple[Any, dict[str, Any]]] = {}
    for path in paths:
        model, meta = checkpoint.load(path)
        s = model.shape
        if (s.num_layers, s.num_experts, s.top_k) != \
                (spec.num_moe_layers, spec.num_experts, spec.top_k):
            raise ConfigError(f"checkpoint {path} has a different routing shape than the "
                              f"evaluation trace {spec.name}")
        if model.uses_features and (trace.features is None
                                    or trace.features.shape[2] != s.feature_dim):
            raise ConfigError(f"checkpoint {path} needs {s.feature_dim} features per layer; "
                              f"the evaluation trace has none or a different width")
        tmeta = meta.get("trace", {})
        same = tmeta.get("fingerprint") == fp
        if same and set(tmeta.get("train_requests", [])) & set(split.test_requests.tolist()):
            raise ConfigError(f"checkpoint {path} was trained on requests of this test split "
                              f"(use the split it was trained with)")
        name = meta.get("name", Path(path).parent.name)
        learned[name] = (Runner(model), {"inputs": model.inputs, "transfer": not same})
    heuristics = [h for h in e["heuristics"]
                  if not (h == "gate-lookahead" and not trace.lookahead)]
    table, curves = evaluate_predictors(trace, split.train_rows, split.test_rows, learned,
                                        heuristics, int(cfg["horizon"]), float(e["threshold"]),
                                        int(e["bins"]), progress=bool(cfg.get("progress")))
    written = write_outputs(table, curves, e["out"], bool(e.get("figure", True)))
    summary = table[table["layer"] == "all"]
    cols = ["predictor", "family", "transfer", "distance", "precision", "recall", "topk_acc",
            "ece"]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("wrote " + ", ".join(str(p) for p in written))
    return table, curves


def info(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Print (and optionally write) the information split of each requested trace."""
    import json

    from moe_offload_lab.traces.analysis.information_split import format_table, information_split
    from moe_offload_lab.traces.atomic import write_text

    i, t = cfg["info"], cfg["trace"]
    models = list(i.get("models") or [])
    traces = []
    if models:
        from moe_offload_lab.policies.learned.data import load_traces

        for name in models:
            traces.append(load_traces((), None, name, int(t["tokens"]), int(t["seed"]))[0])
    else:
        traces.append(_trace(cfg)[0])
    rows = []
    for trace in traces:
        row = information_split(trace, int(cfg["context"]), int(i["seed"])).summary()
        row["tokens"] = trace.num_tokens
        rows.append(row)
    table = format_table(rows)
    print(f"information split (bits, layer means; held-out requests; c={cfg['context']})")
    print(table, end="")
    if i.get("out"):
        out = Path(i["out"])
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "info.json", json.dumps(rows, indent=2) + "\n")
        write_text(out / "info.md", table)
        print(f"wrote {out / 'info.json'}, {out / 'info.md'}")
    return rows


def list_cache() -> int:
    """Print the cached auto-trained checkpoints."""
    from moe_offload_lab.policies.learned.autotrain import cache_root, entries

    found = entries()
    print(f"{cache_root()}: {len(found)} checkpoint(s)")
    for e in found:
        print(f"  {e['model']:<20} {e['predictor']:<22} {e['source'] or '?':<7} {e['path']}")
    return 0


def _main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args[:1] == ["--version"]:
        print(version_line(PROG))
        return 0
    if args and args[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if args and args[0] == "evaluate":
        evaluate(compose(args[1:]))
        return 0
    if args and args[0] == "info":
        info(compose(args[1:]))
        return 0
    if args and args[0] == "cache":
        return list_cache()
    train(compose(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-train`` (returns the exit status)."""
    return run_command(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
