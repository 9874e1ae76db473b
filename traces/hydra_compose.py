"""One way to compose a Hydra config folder, also from inside a running Hydra app.

Every command composes its configs with Hydra's compose API (``moe-sim``, ``moe-train``,
``moe-hw calibrate``). Hydra refuses to initialise a second time in one process, and a policy
that trains its predictor on first use (``checkpoint: auto``) composes ``conf/train`` from inside
a ``moe-sim`` job, where the app's own Hydra is initialised. :func:`compose_config` sets the
running app's Hydra aside while it composes and puts it back untouched afterwards.

Composing is also fast when many configs share their config groups. A sweep's check (every job
composed before any runs) and ``moe-tune``'s space check compose tens to hundreds of configs
that differ only in plain values (``cache.fraction=0.25``, ``policy.planner.n=2``); a full
composition costs 0.1-0.3 s (the defaults tree, a dozen YAML files read and merged), so checking
a 100-config space took 10-50 s. Hydra composes in two stages: the config-group overrides
(``policy=lru``, ``experiment=compare``) and Hydra's own (``hydra.searchpath=[...]``) decide the
defaults list, which is loaded and merged; the remaining overrides are then applied to the
merged config one after the other (``ConfigLoaderImpl._apply_overrides_to_config``).
:func:`compose_config` runs the first stage once per distinct set of group and Hydra overrides
(remembered, the ``_MEMO_SIZE`` latest) and the second on a copy, with Hydra's own function, so
the result and the error messages are Hydra's. Which override names a config group is asked of
Hydra's config repository with the command line's search path, as Hydra's defaults list asks.
A remembered merge is keyed by the size and modification time of every YAML file of the config
folder and of the ``file://`` search-path folders, so a config edited on disk is read again.
``return_hydra_config=True`` composes in full (Hydra fills that node from every override).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError


@contextmanager
def _app_hydra_set_aside() -> Iterator[None]:
    """The running app's GlobalHydra (if any) removed for the block, restored after it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    running = Singleton._instances.pop(GlobalHydra, None)  # noqa: SLF001 (Hydra keeps it there)
    try:
        yield
    finally:
        if running is None:
            Singleton._instances.pop(GlobalHydra, None)  # noqa: SLF001
        else:
            Singleton._instances[GlobalHydra] = running  # noqa: SLF001


def compose_config(folder: Path, overrides: Sequence[str], config_name: str = "config",
                   return_hydra_config: bool = False) -> Any:
    """``folder/<config_name>.yaml`` composed with ``overrides`` (a DictConfig); any Hydra or
    OmegaConf error becomes one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    try:
        with _app_hydra_set_aside(), \
                initialize_config_dir(config_dir=str(folder), version_base=None):
            if return_hydra_config:
                return compose(config_name=config_name, overrides=overrides,
                               return_hydra_config=True)
            stamp = _stamp(folder, overrides)
            shared, values = _split(config_name, overrides, stamp)
            key = (str(folder), config_name, stamp, *shared)
            base = _bases.get(key)
            if base is None:
                base = compose(config_name=config_name, overrides=shared)
                _remember(key, base)
            else:
                _bases.move_to_end(key)
        cfg = copy.deepcopy(base)
        if values:
            from hydra._internal.config_loader_impl import ConfigLoaderImpl

            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)  # noqa: SLF001
        return cfg
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


_MEMO_SIZE = 64
_bases: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # group overrides -> merged config
_repos: dict[tuple[Any, ...], Any] = {}  # search path -> Hydra's config repository


def _remember(key: tuple[Any, ...], base: Any) -> None:
    _bases[key] = base
    while len(_bases) > _MEMO_SIZE:
        _bases.popitem(last=False)


def _stamp(folder: Path, overrides: list[str]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of every YAML file Hydra may read: the config folder's and those of
    the ``file://`` folders of a ``hydra.searchpath`` override (links followed)."""
    folders = [Path(folder)]
    for item in overrides:
        if item.split("=", 1)[0].lstrip("+") == "hydra.searchpath":
            folders += [Path(p) for p in _file_entries(item.split("=", 1)[1])]
    stamps = []
    for root in folders:
        for path in sorted(root.rglob("*.y*ml")):
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


def _split(config_name: str, overrides: list[str], stamp: Any) -> tuple[list[str], list[Any]]:
    """(the overrides that shape the defaults list: Hydra's own, config groups, packages, in
    order; the parsed value overrides applied after the merge, in order)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    searchpath = tuple(o.input_line for o in parsed if o.get_key_element() == "hydra.searchpath")
    repo = _repository(config_name, searchpath, stamp)
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


def _repository(config_name: str, searchpath: tuple[str, ...], stamp: Any) -> Any:
    """Hydra's config repository with the command line's ``hydra.searchpath`` (the one its
    defaults list asks whether a name is a config group); one per search path."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    key = (str(loader.get_search_path()), config_name, stamp, *searchpath)
    repo = _repos.get(key)
    if repo is None:
        _, repo = loader._parse_overrides_and_create_caching_repo(  # noqa: SLF001
            config_name, list(searchpath))
        _repos[key] = repo
    return repo
