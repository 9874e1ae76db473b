"""Learned and heuristic expert predictors: accuracy per lookahead distance and cost.

    python benchmarks/bench_predictors.py                 bundled real trace, every predictor
    python benchmarks/bench_predictors.py --load          use policies/learned/checkpoints/*.pt
    python benchmarks/bench_predictors.py --preset mixtral-8x7b --tokens 8000
                                                          a synthetic preset: Prophet's history
                                                          transformer against a plain MLP and a
                                                          logistic regression on the same inputs
    python benchmarks/bench_predictors.py --out DIR       also write eval.csv/md/png there

Bundled mode: every learned predictor (conf/train/predictor/*.yaml) is trained with the default
moe-train settings on the train split (by request) of ``tiny-moe-stdlib`` - or loaded from its
committed checkpoint - and scored with the heuristic predictors (history, gate-lookahead,
popularity) on the same held-out test requests.

Preset mode (the reviewers' question: is a transformer needed?): ``--predictors`` (default
history-transformer, mlp-history, logreg-history: the same inputs, the last c=3 layers'
experts) are trained on the preset generated with seed 90001 (the seed ``checkpoint: auto``
trains on) and scored on NEW requests: the preset generated with ``--eval-seed`` (default 1),
half of whose requests are scored; the heuristics (history, popularity) warm up on the other
half. Same routing structure, requests never seen in training.

Both print precision and recall at score 0.5 and top-k accuracy per distance, the mean expected
calibration error, parameters and the measured inference cost per call (one CPU thread, batch 1
and 32; the same code fills the checkpoints' DecisionCost). Heuristic costs are their declared
DecisionCosts (benchmarks/bench_policies.py measures those on a Mixtral shape).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from moe_offload_lab.policies.learned import checkpoint, timing
from moe_offload_lab.policies.learned.cli import compose, train, train_on
from moe_offload_lab.policies.learned.data import split_by_request
from moe_offload_lab.policies.learned.evaluate import evaluate_predictors, markdown, write_outputs
from moe_offload_lab.policies.learned.runner import Runner
from moe_offload_lab.policies.registry import PREDICTORS
from moe_offload_lab.traces.catalog import conf_dir

HEURISTICS = ["history", "gate-lookahead", "popularity"]
TRAIN_SEED = 90001


def _bundled(args: argparse.Namespace, tmp: str):  # noqa: ANN202
    import moe_offload_lab.traces.bundled as bundled_traces

    names = sorted(p.stem for p in (conf_dir() / "train" / "predictor").glob("*.yaml"))
    names = [n for n in names if n != "prophet-paper"]  # minutes per epoch on a CPU
    cfg = compose([])
    trace = bundled_traces.load()
    split = split_by_request(trace, cfg["split"]["val"], cfg["split"]["test"],
                             cfg["split"]["seed"])
    models = {}
    for name in names:
        if args.load:
            path = Path("policies/learned/checkpoints") / f"{name}.pt"
        else:
            path = Path(tmp) / name / "model.pt"
            train(compose([f"predictor={name}", f"out={path}", "progress=false"]))
        models[name] = checkpoint.load(path)[0]
    header = (f"tiny-moe-stdlib: {trace.num_tokens} tokens, train {len(split.train_requests)} / "
              f"val {len(split.val_requests)} / test {len(split.test_requests)} requests "
              f"({len(split.test_rows)} test tokens)")
    return trace, split.train_rows, split.test_rows, models, HEURISTICS, header


def _preset(args: argparse.Namespace):  # noqa: ANN202
    from moe_offload_lab.traces.synthetic import generate

    train_trace = generate(args.preset, tokens=args.tokens, seed=TRAIN_SEED)
    models, seconds = {}, {}
    for name in args.predictors.split(","):
        cfg = compose([f"predictor={name}", "progress=false", *args.override])
        started = time.perf_counter()
        models[name] = train_on(train_trace, {"source": "synthetic", "preset": args.preset},
                                cfg, score_test=False)[0]
        seconds[name] = time.perf_counter() - started
    trace = generate(args.preset, tokens=args.eval_tokens or args.tokens, seed=args.eval_seed)
    split = split_by_request(trace, 0.0, 0.5, seed=0)
    header = (f"{args.preset}: trained on {train_trace.num_tokens} tokens (seed {TRAIN_SEED}, "
              f"{len(np.unique(train_trace.request_id))} requests); scored on "
              f"{len(split.test_rows)} tokens of {len(split.test_requests)} new requests "
              f"(seed {args.eval_seed}); training seconds: "
              + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return trace, split.train_rows, split.test_rows, models, ["history", "popularity"], header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", action="store_true", help="load the committed checkpoints")
    parser.add_argument("--preset", default=None, help="a synthetic preset instead")
    parser.add_argument("--tokens", type=int, default=8000, help="preset training tokens")
    parser.add_argument("--eval-tokens", type=int, default=0, help="preset scoring trace tokens")
    parser.add_argument("--eval-seed", type=int, default=1)
    parser.add_argument("--predictors", default="history-transformer,mlp-history,logreg-history")
    parser.add_argument("--override", action="append", default=[],
                        help="a moe-train override for preset training (repeatable)")
    parser.add_argument("--out", default=None, help="write eval.csv/md/png here")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.preset:
            trace, train_rows, test_rows, models, heuristics, header = _preset(args)
        else:
            trace, train_rows, test_rows, models, heuristics, header = _bundled(args, tmp)
    learned, costs = {}, {}
    for name, model in models.items():
        learned[name] = (Runner(model), {"inputs": model.inputs, "transfer": bool(args.preset)})
        costs[name] = timing.measure_cpu(model, (1, 32), args.repeats, 10)
        costs[name]["parameters"] = sum(p.numel() for p in model.parameters())
    if not trace.lookahead:
        heuristics = [h for h in heuristics if h != "gate-lookahead"]
    table, curves = evaluate_predictors(trace, train_rows, test_rows, learned, heuristics,
                                        int(compose([])["horizon"]))
    summary = table[table["layer"] == "all"]
    wide = summary.pivot_table(index="predictor", columns="distance",
                               values=["precision", "recall", "topk_acc"])
    wide.columns = [f"{metric}@d{d}" for metric, d in wide.columns]
    wide = wide.join(summary.groupby("predictor")["ece"].mean().rename("ece_mean"))
    for name in wide.index:
        if name in costs:
            c = costs[name]
            wide.loc[name, "cost_b1_us"] = c["batch_s"]["1"] * 1e6
            wide.loc[name, "cost_b32_us"] = c["batch_s"]["32"] * 1e6
            wide.loc[name, "params"] = c["parameters"]
        else:
            declared = PREDICTORS.get(name).decision_cost
            wide.loc[name, "cost_b1_us"] = declared.seconds(1) * 1e6
            wide.loc[name, "cost_b32_us"] = declared.seconds(32) * 1e6
            wide.loc[name, "params"] = 0
    wide["params"] = wide["params"].astype(int)
    wide = wide.sort_values("topk_acc@d1", ascending=False).reset_index()
    print(f"{header}; torch {torch.__version__}, 1 CPU thread")
    print("learned costs: measured per call here; heuristic costs: declared DecisionCost")
    print(markdown(wide))
    if args.out:
        paths = write_outputs(table, curves, args.out)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
