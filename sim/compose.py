"""Composing ``conf/config.yaml`` with Hydra's compose API, fast when many configs share groups.

A sweep's check (every job composed before any runs) and ``moe-tune``'s space check compose
tens to hundreds of configs that differ only in plain values (``cache.fraction=0.25``,
``policy.planner.n=2``). A full Hydra composition costs about 0.3 s (building the defaults tree,
reading and merging a dozen YAML files), so checking a 100-config space took half a minute.

Hydra composes in two stages: the config-group overrides (``policy=lru``, ``model=...``,
``experiment=compare``) and Hydra's own (``hydra.searchpath=[...]``) decide the defaults list,
which is loaded and merged; the remaining overrides are then applied to the merged config, one
after the other (``ConfigLoaderImpl._apply_overrides_to_config``). :func:`compose` runs the first
stage once per distinct set of group and Hydra overrides (remembered, up to ``_MEMO_SIZE``) and
the second stage on a copy, with Hydra's own function, so the result and the error messages are
Hydra's. Which override names a config group is asked of Hydra's config repository, with the
command line's search path, exactly as Hydra's defaults list decides it. A remembered merge is
keyed by the size and modification time of every YAML file of the config folder and of the
``file://`` search-path folders, so a config edited on disk is read again.

``with_hydra=True`` (the ``hydra`` node kept) always composes in full: Hydra fills that node from
the whole override list.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

CONFIG_NAME = "config"
_MEMO_SIZE = 64
_bases: OrderedDict[tuple[Any, ...], DictConfig] = OrderedDict()
_repos: dict[tuple[Any, ...], Any] = {}  # search path -> a config repository


def compose(config_dir: str, overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """The config ``config_dir/config.yaml`` composed with ``overrides``, as
    ``hydra.compose(..., return_hydra_config=with_hydra)`` would return it. Hydra's and
    OmegaConf's exceptions reach the caller."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = list(overrides)
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        if with_hydra:
            return hydra_compose(config_name=CONFIG_NAME, overrides=overrides,
                                 return_hydra_config=True)
        stamp = _stamp(config_dir, overrides)
        shared, values = _split(overrides, stamp)
        key = (config_dir, stamp, *shared)
        base = _bases.get(key)
        if base is None:
            base = hydra_compose(config_name=CONFIG_NAME, overrides=shared)
            _remember(key, base)
        else:
            _bases.move_to_end(key)
    cfg = copy.deepcopy(base)
    if values:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


def _remember(key: tuple[Any, ...], base: DictConfig) -> None:
    _bases[key] = base
    while len(_bases) > _MEMO_SIZE:
        _bases.popitem(last=False)


def _stamp(config_dir: str, overrides: list[str]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of every YAML file Hydra may read: the config folder's and those of
    ``file://`` folders named by a ``hydra.searchpath`` override (links followed)."""
    from pathlib import Path

    folders = [Path(config_dir)]
    for item in overrides:
        if item.split("=", 1)[0].lstrip("+") == "hydra.searchpath":
            folders += [Path(p) for p in _file_entries(item.split("=", 1)[1])]
    stamps = []
    for folder in folders:
        for path in sorted(folder.rglob("*.y*ml")):
            try:
                st = path.stat()
            except OSError:  # a dangling link: Hydra will say so
                continue
            stamps.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def _file_entries(value: str) -> list[str]:
    """The ``file://`` folders of a ``hydra.searchpath`` value (``[file://a,'file://b']``)."""
    parts = (p.strip().strip("'\"") for p in value.strip().strip("[]").split(","))
    return [p[len("file://"):] for p in parts if p.startswith("file://")]


def _split(overrides: list[str], stamp: Any) -> tuple[list[str], list[Any]]:
    """(the overrides that shape the defaults list: Hydra's own, config groups, packages, in
    order; the parsed value overrides applied after the merge, in order)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    searchpath = tuple(o.input_line for o in parsed if o.get_key_element() == "hydra.searchpath")
    repo = _repository(searchpath, stamp)
    shared, values = [], []
    for override in parsed:
        is_value = (not override.is_hydra_override() and override.package is None
                    and (isinstance(override.value(), dict)
                         or not repo.group_exists(override.key_or_group)))
        if is_value:
            values.append(override)
        else:
            shared.append(override.input_line)
    return shared, values


def _repository(searchpath: tuple[str, ...], stamp: Any) -> Any:
    """Hydra's config repository with the command line's ``hydra.searchpath`` (the one its
    defaults list asks whether a name is a config group); one per search path and conf dir."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    key = (str(loader.get_search_path()), stamp, *searchpath)
    repo = _repos.get(key)
    if repo is None:
        _, repo = loader._parse_overrides_and_create_caching_repo(CONFIG_NAME, list(searchpath))
        _repos[key] = repo
    return repo


def forget() -> None:
    """Drop the remembered compositions (a config file changed on disk)."""
    _bases.clear()
    _repos.clear()
