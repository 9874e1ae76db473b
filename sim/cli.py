"""``moe-sim``: the simulator's command line, a Hydra app over ``conf/config.yaml``.

Arguments are Hydra overrides (``hardware=h100-sxm cache.fraction=0.25 batch=4``). Writes
``summary.json``, ``steps.parquet``, ``events.parquet`` and ``timeline.json`` into ``out`` and
prints a table. ``moe-sim experiment=compare`` runs the bundled policy comparison instead
(``conf/experiment/compare.yaml``; writes ``compare.csv``, ``compare.md``, ``summaries.json``).
User errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sim.run import RunConfig, simulate
from traces.catalog import conf_dir
from traces.errors import ConfigError, MoeLabError

PROG = "moe-sim"


def compose(overrides: Sequence[str]) -> DictConfig:
    """The composed config for these overrides (Hydra compose API; errors -> ConfigError)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


def _table(summary: dict[str, Any]) -> str:
    keys = ("model", "hardware", "policy", "capacity_slots", "batch", "tokens", "steps",
            "makespan_s", "tokens_per_s", "tpot_ms_mean", "tpot_ms_p50", "tpot_ms_p99",
            "ttft_ms_mean", "hit_rate", "h2d_bytes", "stall_s", "prefetch_precision",
            "prefetch_recall", "wasted_prefetch_bytes", "sim_wall_s")
    lines = []
    for key in keys:
        value = summary.get(key)
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<24}{text}")
    return "\n".join(lines)


def _compare(run_cfg: RunConfig) -> int:
    from sim.compare import run_comparison, text_table, write_comparison

    out = Path(run_cfg.out) if run_cfg.out else Path("outputs/sim") / (
        f"compare-{run_cfg.model['name']}-{run_cfg.hardware['name']}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}")
    table, summaries = run_comparison(run_cfg)
    paths = write_comparison(table, summaries, out)
    print(f"{run_cfg.model['name']} on {run_cfg.hardware['name']}, "
          f"{summaries[0]['tokens']} tokens, batch {run_cfg.batch}")
    print(text_table(table))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-sim``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    try:
        cfg = compose(args)
        run_cfg = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
        if run_cfg.compare:
            return _compare(run_cfg)
        out = Path(cfg.out) if cfg.out else Path("outputs/sim") / (
            f"{run_cfg.model['name']}-{run_cfg.hardware['name']}-{run_cfg.policy['name']}-"
            f"{time.strftime('%Y%m%d-%H%M%S')}")
        result = simulate(run_cfg)
        paths = result.write(out)
    except MoeLabError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(_table(result.summary))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0




if __name__ == "__main__":
    sys.exit(main())
