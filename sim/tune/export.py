"""Export a trial as a policy config (``conf/policy/<name>.yaml``) plus the ``moe-sim`` command
that reproduces its value.

The policy YAML is the trial's composed ``policy`` group (the chosen policy with the tuned
``policy.*`` overrides applied), renamed. The command carries the study's base overrides and the
trial's non-policy overrides (``cache.fraction`` ...); a file outside ``conf/policy`` is named
by ``hydra.searchpath`` (a folder called ``policy``) or by path. Files are written atomically; a
bundled config is never replaced without ``force``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.atomic import write_text
from moe_offload_lab.traces.errors import ConfigError

BUNDLED_HEADER = "# Exported by moe-tune"


def pick_trial(study: Any, number: int | None = None) -> Any:
    """Trial ``number`` (must be complete), else the best one (single objective) or the Pareto
    trial with the lowest latency (multi-objective)."""
    from optuna.trial import TrialState

    complete = {t.number: t for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.COMPLETE,))}
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no complete trials yet")
    if number is not None:
        if number not in complete:
            raise ConfigError(f"study {study.study_name!r} has no complete trial {number}")
        return complete[number]
    if len(study.directions) == 1:
        return study.best_trial
    return min(study.best_trials, key=lambda t: (t.values[0], t.values[1]))


def split_overrides(overrides: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(policy name, ``policy.*`` overrides, the rest) of a trial's overrides."""
    policy, inner, rest = None, [], []
    for item in overrides:
        key = item.split("=", 1)[0]
        if key == "policy":
            policy = item.split("=", 1)[1]
        elif key.startswith("policy."):
            inner.append(item)
        else:
            rest.append(item)
    return policy, inner, rest


def policy_mapping(overrides: list[str]) -> dict[str, Any]:
    """The composed ``policy`` group of a trial's overrides, as a plain mapping."""
    from moe_offload_lab.sim.cli import compose
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(overrides).policy, resolve=True)


def moe_sim_command(name: str, rest: list[str], policy_dir: Path) -> str:
    """The ``moe-sim`` command running policy ``name`` with the trial's other overrides."""
    from moe_offload_lab.traces.catalog import conf_dir

    args = ["moe-sim", f"policy={name}", *rest]
    bundled = (conf_dir() / "policy").resolve()
    if policy_dir.resolve() != bundled:
        if policy_dir.name != "policy":  # moe-sim takes the file by path
            args[1] = f"policy={(policy_dir / f'{name}.yaml').as_posix()}"
        else:
            args.append(f"hydra.searchpath=[file://{policy_dir.resolve().parent.as_posix()}]")
    return " ".join(shlex.quote(a) for a in args)


def export_trial(study: Any, trial: Any, name: str, policy_dir: Path, force: bool = False
                 ) -> tuple[Path, str]:
    """Write ``policy_dir/<name>.yaml`` for ``trial``; returns the path and the command."""
    import yaml

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"export name must be a plain file name, got {name!r}")
    overrides = list(trial.user_attrs.get("overrides") or [])
    if not overrides:
        raise ConfigError(f"trial {trial.number} has no recorded overrides")
    path = policy_dir / f"{name}.yaml"
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; choose another --name or pass --force")
    policy = policy_mapping(overrides)
    source, _, rest = split_overrides(overrides)
    objectives = study.user_attrs.get("space", {}).get("objective", [])
    values = ", ".join(f"{o} = {v:.6g}" for o, v in zip(objectives, trial.values, strict=False))
    policy["name"] = name
    policy["description"] = (f"Tuned by moe-tune: study {study.study_name}, trial "
                             f"{trial.number} ({values}), from {source or policy.get('name')}.")
    command = moe_sim_command(name, rest, policy_dir)
    header = (f"{BUNDLED_HEADER} (study {study.study_name}, trial {trial.number}: {values}).\n"
              f"# Reproduce: {command}\n")
    text = header + yaml.safe_dump(policy, sort_keys=False, default_flow_style=None)
    write_text(path, text)
    return path, command
