"""moe-tune throughput and quality on the bundled default space (conf/tune/default.yaml:
Mixtral-8x7B on an RTX 4090, half cache, 1,000 tokens, mean TPOT).

Runs a fresh study of ``--trials`` trials in a temporary SQLite storage (one process), then every
bundled hand-written policy config that is not an oracle (no oracle predictor, no Belady) on the
same trace and cache, and prints trials per minute, the tuned best and the best hand-written
value, so one sees whether tuning is at least as good.

    python benchmarks/bench_tune.py [--trials 40] [--space default] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moe_offload_lab.policies.config import load_policy_config, shape_free_policies
from moe_offload_lab.sim.tune.space import check_space, load_space
from moe_offload_lab.sim.tune.study import open_study, run_worker
from moe_offload_lab.sim.tune.trial import evaluate


def _is_oracle(name: str) -> bool:
    cfg = load_policy_config(name)
    return cfg.predictor.get("name") == "oracle" or cfg.replacement.get("name") == "belady"


def main() -> None:
    """Run the benchmark and print its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--space", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    space = load_space(args.space)
    check_space(space)
    objective = space.objectives[0]
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"sqlite:///{Path(tmp) / 'bench.db'}"
        start = time.perf_counter()
        run_worker(space, "bench", spec, args.trials, seed=args.seed, progress=True)
        wall_s = time.perf_counter() - start
        study = open_study(spec, "bench")
        states = [t.state.name for t in study.get_trials()]
        best = study.best_trial
    print(f"space {space.name}: {' '.join(space.base)}, objective {objective}")
    print(f"{len(states)} trials in {wall_s:.1f} s: {len(states) / wall_s * 60:.1f} trials/min "
          f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned)")
    print(f"tuned best: {best.value:.4f} (trial {best.number}: "
          f"{' '.join(best.user_attrs['overrides'][len(space.base):])})")

    rows = []
    for name in shape_free_policies():
        if _is_oracle(name) or name.startswith("tuned-"):
            continue
        (value,), _ = evaluate([*space.base, f"policy={name}"], space.objectives)
        rows.append((value, name))
    rows.sort()
    print("hand-written policies on the same trace and cache:")
    for value, name in rows:
        print(f"  {name:<20}{value:.4f}")
    hand_value, hand_name = rows[0]
    gain = (hand_value - best.value) / hand_value * 100
    verdict = "at least as good" if best.value <= hand_value else "WORSE"
    print(f"best hand-written: {hand_name} {hand_value:.4f}; tuned {best.value:.4f} "
          f"({gain:+.1f}% lower {objective}): tuning is {verdict}")


if __name__ == "__main__":
    main()
