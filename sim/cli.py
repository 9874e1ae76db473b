"""``moe-sim``: the simulator's command line, a Hydra app over ``conf/config.yaml``.

    moe-sim                                    the bundled comparison (experiment=compare)
    moe-sim policy=gate-lookahead hardware=h100-pcie cache.fraction=0.25 batch=4
    moe-sim experiment=compare trace.tokens=5000
    moe-sim --multirun policy=lru,presched cache.fraction=0.25,0.5     (joblib, in parallel)
    moe-sim --multirun hydra/launcher=slurm policy=lru,presched        (SLURM via submitit)
    moe-sim cluster=h100x8-nvswitch balance=probe model=deepseek-v3 batch=32   (expert parallel)

Arguments are Hydra overrides. One run writes summary.json, steps.parquet, events.parquet,
timeline.json and steps.png into Hydra's run folder (``out=DIR`` chooses it) and prints a table;
a comparison writes compare.csv, compare.md, compare.png, summaries.json and each run's files in
runs/<label>/; a sweep writes one numbered folder per job plus sweep.csv and sweep.md, and prints
the combined table. Every job's config is checked before anything runs. User errors print one
line on stderr and exit with 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.run import RunConfig, prepare, simulate
from moe_offload_lab.traces.catalog import conf_dir
from moe_offload_lab.traces.errors import ConfigError, MoeLabError, run_command
from omegaconf import DictConfig, OmegaConf

PROG = "moe-sim"
_MULTIRUN = ("-m", "--multirun")
_TABLE_KEYS = ("model", "hardware", "policy", "capacity_slots", "fits_gpu_memory", "batch",
               "tokens", "steps", "makespan_s", "tokens_per_s", "tpot_ms_mean", "tpot_ms_p50",
               "tpot_ms_p99", "ttft_ms_mean", "hit_rate", "h2d_bytes", "stall_s",
               "prefetch_precision", "prefetch_recall", "wasted_prefetch_bytes", "nvme_reads",
               "events", "sim_wall_s")


class _JobFailed(BaseException):  # noqa: N818 - passes through Hydra's handlers
    """A job of a single run failed with a user error (already reported)."""


def compose(overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """The composed config for these overrides (Hydra compose API; errors -> ConfigError).
    ``with_hydra`` keeps the ``hydra`` node (and accepts Hydra's own overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return hydra_compose(config_name="config", overrides=list(overrides),
                                 return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


def run_config(cfg: DictConfig) -> RunConfig:
    """The composed config as a :class:`RunConfig` (``hydra`` node dropped)."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    cfg = OmegaConf.create(data)
    try:
        return RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    except Exception as exc:  # interpolation errors from OmegaConf
        if isinstance(exc, MoeLabError):
            raise
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


def check(overrides: Sequence[str]) -> int:
    """Compose and check every job of these overrides (sweeps expanded); returns the job count."""
    from moe_offload_lab.sim.sweep import expand

    jobs = expand(overrides)
    hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith("hydra")]
    if hydra_overrides:  # Hydra's own choices (launcher...): composing once checks them
        compose([*jobs[0], *hydra_overrides], with_hydra=True)
    for job in jobs:
        cfg = run_config(compose(job))
        where = f" (job {' '.join(job)})" if len(jobs) > 1 else ""
        try:
            _check_one(cfg)
        except MoeLabError as exc:
            raise type(exc)(f"{exc}{where}") from None
    return len(jobs)


def _check_one(cfg: RunConfig) -> None:
    if cfg.cluster:
        from moe_offload_lab.sim.cluster.hydra_run import check_cluster

        check_cluster(cfg)
        return
    if not cfg.compare:
        prepare(cfg)
        return
    from moe_offload_lab.sim.compare import run_configs

    for one in run_configs(cfg).values():
        prepare(one)


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(summary: dict[str, Any]) -> str:
    return "\n".join(f"{key:<24}{_number(summary.get(key))}" for key in _TABLE_KEYS)


def _memory_note(summaries: list[dict[str, Any]]) -> str | None:
    over = [s for s in summaries if not s.get("fits_gpu_memory", True)]
    if not over:
        return None
    worst = max(over, key=lambda s: s["gpu_memory_needed_gb"])
    return (f"note: {len(over)} of {len(summaries)} runs need more GPU memory than "
            f"{worst['hardware']} has (up to {worst['gpu_memory_needed_gb']:.1f} GB of weights "
            f"and cache against {worst['gpu_memory_gb']:.1f} GB); cache.strict_memory=true "
            f"refuses such runs")


def _run_compare(run_cfg: RunConfig, out: Path) -> None:
    from moe_offload_lab.sim.compare import run_comparison, text_table, write_comparison

    table, summaries, results = run_comparison(run_cfg)
    paths = write_comparison(table, summaries, results, out)
    print(f"{run_cfg.model['name']} on {run_cfg.hardware['name']}, {summaries[0]['tokens']} "
          f"tokens, batch {run_cfg.batch}")
    print(text_table(table))
    note = _memory_note(summaries)
    if note:
        print(note)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _run_one(run_cfg: RunConfig, out: Path, quiet: bool = False) -> None:
    result = simulate(run_cfg)
    paths = result.write(out)
    if quiet:  # a sweep job: the combined table comes at the end
        s = result.summary
        print(f"job {out.name}: {s['policy']}, {s['capacity_slots']} slots: "
              f"{_number(s['tokens_per_s'])} tokens/s, hit rate {_number(s['hit_rate'])}")
        return
    print(_table(result.summary))
    note = _memory_note([result.summary])
    if note:
        print(note)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _run_cluster(run_cfg: RunConfig, out: Path) -> None:
    from moe_offload_lab.sim.cluster.hydra_run import simulate_cluster_run

    result = simulate_cluster_run(run_cfg)
    paths = result.write(out)
    print("\n".join(f"{key:<32}{_number(value)}" for key, value in result.summary.items()
                    if not isinstance(value, (dict, list))))
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _task(cfg: DictConfig) -> None:
    """The Hydra task: one run or one comparison into Hydra's output folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from moe_offload_lab.sim.sweep import ERROR_FILE

    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        run_cfg = run_config(cfg)
        if run_cfg.cluster:
            _run_cluster(run_cfg, out)
        elif run_cfg.compare:
            _run_compare(run_cfg, out)
        else:
            _run_one(run_cfg, out, quiet=sweeping)
    except MoeLabError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if not sweeping:
            raise _JobFailed from None
        (out / ERROR_FILE).write_text(f"{exc}\n", encoding="utf-8")


def _run_hydra(args: list[str]) -> None:
    import hydra

    app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)(_task)
    saved = sys.argv
    sys.argv = [PROG, *args]
    try:
        app()
    finally:
        sys.argv = saved


def _hydra_args(args: list[str]) -> tuple[list[str], bool, Path | None]:
    """Hydra's argv for ``args``: ``out=DIR`` becomes the run or sweep folder; a sweep folder is
    fixed here so the combined table can be read back after the launcher returns."""
    multirun = any(a in _MULTIRUN for a in args)
    out = next((a.split("=", 1)[1] for a in args if a.startswith("out=")), None)
    args = [a for a in args if not a.startswith("out=")]
    if multirun:
        sweep_dir = Path(out) if out else None
        if sweep_dir is None:
            given = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")),
                         None)
            sweep_dir = Path(given) if given else Path("outputs/sweep") / time.strftime(
                "%Y%m%d-%H%M%S")
        args = [a for a in args if not a.startswith("hydra.sweep.dir=")]
        return [*args, f"hydra.sweep.dir={sweep_dir}"], True, sweep_dir
    if out:
        args.append(f"hydra.run.dir={out}")
    return args, False, None


def _finish_sweep(sweep_dir: Path) -> int:
    from moe_offload_lab.sim.compare import text_table
    from moe_offload_lab.sim.sweep import collect, write

    table = collect(sweep_dir)
    if table.empty:
        raise ConfigError(f"the sweep wrote no jobs into {sweep_dir}")
    paths = write(table, sweep_dir)
    shown = table.drop(columns=[c for c in ("error",) if not table[c].astype(bool).any()])
    print(text_table(shown))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    failed = int(table["error"].astype(bool).sum())
    if failed:
        print(f"{PROG}: error: {failed} of {len(table)} jobs failed (see {sweep_dir})",
              file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-sim``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    return run_command(PROG, lambda: _main(args or ["experiment=compare"]))


def _main(args: list[str]) -> int:
    hydra_args, multirun, sweep_dir = _hydra_args(args)
    check([a for a in hydra_args if a not in _MULTIRUN])
    try:
        _run_hydra(hydra_args)
    except _JobFailed:
        return 2
    return _finish_sweep(sweep_dir) if multirun and sweep_dir is not None else 0


if __name__ == "__main__":
    sys.exit(main())
