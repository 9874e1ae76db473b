"""Learned and heuristic expert predictors on the bundled real trace: accuracy and cost.

    python benchmarks/bench_predictors.py                 train every predictor (about 1 min)
    python benchmarks/bench_predictors.py --load          use policies/learned/checkpoints/*.pt
    python benchmarks/bench_predictors.py --out DIR       also write eval.csv/md/png there

Every learned predictor (conf/train/predictor/*.yaml) is trained with the default moe-train
settings on the train split (by request) of ``tiny-moe-stdlib`` - or loaded from its committed
checkpoint - and scored with the heuristic predictors (history, gate-lookahead, popularity) on
the same held-out test requests: precision and recall at score 0.5 and top-k accuracy per
distance, expected calibration error. Inference cost per call (one CPU thread, batch 1 and 32)
is measured here for the learned predictors, with the same code that fills their checkpoints'
DecisionCost; the heuristics' costs are their declared DecisionCosts (benchmarks/bench_policies.py
measures those on a Mixtral shape).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from moe_offload_lab.policies.learned import checkpoint, timing
from moe_offload_lab.policies.learned.cli import compose, train
from moe_offload_lab.policies.learned.data import split_by_request
from moe_offload_lab.policies.learned.evaluate import evaluate_predictors, markdown, write_outputs
from moe_offload_lab.policies.learned.runner import Runner
from moe_offload_lab.policies.registry import PREDICTORS
from moe_offload_lab.traces.catalog import conf_dir

HEURISTICS = ["history", "gate-lookahead", "popularity"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", action="store_true", help="load the committed checkpoints")
    parser.add_argument("--out", default=None, help="write eval.csv/md/png here")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = sorted(p.stem for p in (conf_dir() / "train" / "predictor").glob("*.yaml"))
    cfg = compose([])
    import moe_offload_lab.traces.bundled as bundled_traces

    trace = bundled_traces.load()
    split = split_by_request(trace, cfg["split"]["val"], cfg["split"]["test"],
                             cfg["split"]["seed"])
    learned, costs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if args.load:
                path = Path("policies/learned/checkpoints") / f"{name}.pt"
            else:
                path = Path(tmp) / name / "model.pt"
                train(compose([f"predictor={name}", f"out={path}", "progress=false"]))
            model, _ = checkpoint.load(path)
            learned[name] = (Runner(model), {"inputs": model.inputs, "transfer": False})
            costs[name] = timing.measure_cpu(model, (1, 32), args.repeats, 10)
            costs[name]["parameters"] = sum(p.numel() for p in model.parameters())
    table, curves = evaluate_predictors(trace, split.train_rows, split.test_rows, learned,
                                        HEURISTICS, int(cfg["horizon"]))
    summary = table[table["layer"] == "all"]
    wide = summary.pivot_table(index="predictor", columns="distance",
                               values=["precision", "recall", "topk_acc"])
    wide.columns = [f"{metric}@d{d}" for metric, d in wide.columns]
    ece = summary.groupby("predictor")["ece"].mean().rename("ece_mean")
    wide = wide.join(ece)
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
    print(f"tiny-moe-stdlib: {trace.num_tokens} tokens, train {len(split.train_requests)} / "
          f"val {len(split.val_requests)} / test {len(split.test_requests)} requests "
          f"({len(split.test_rows)} test tokens); torch {torch.__version__}, 1 CPU thread")
    print("learned costs: measured per call here; heuristic costs: declared DecisionCost")
    print(markdown(wide))
    if args.out:
        paths = write_outputs(table, curves, args.out)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
