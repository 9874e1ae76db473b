"""What ``moe-sim`` does with its arguments before Hydra sees them.

- :func:`hydra_flag`: Hydra's own flags (``--cfg job``, ``--info``, ``--help``...), which go to
  Hydra untouched instead of being checked as overrides;
- :func:`policy_file_overrides`: ``policy=path/to/file.yaml`` (also in sweeps,
  ``policy=a.yaml,lru``). Hydra only finds configs inside a search-path folder's ``policy/``
  group, so each file is linked into a private search-path folder of this process under a
  name of its own (its stem, or the stem and a hash where that is taken), the override becomes
  ``policy=<that name>`` and the folder is appended to ``hydra.searchpath`` (merged with one the
  user gave). Hydra composes every job's config in this process, launcher workers receive the
  composed config, so the folder only needs to live as long as the process.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from moe_offload_lab.traces.errors import ConfigError

#: Hydra flags that take a value (``--cfg job``); ``--info`` takes an optional one
_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--shell-completion", "-sc",
                "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
_SOLO_FLAGS = ("--info", "-i", "--resolve", "--help", "-h", "--hydra-help")
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
YAML_SUFFIXES = _YAML = (".yaml", ".yml")  # a policy file's
_SEARCHPATH = "hydra.searchpath"

_shim: Path | None = None
_names: dict[Path, str] = {}  # resolved policy file -> its option name in the shim


def hydra_flag(args: Sequence[str]) -> str | None:
    """The first Hydra introspection flag in ``args`` (``--cfg``, ``--info``, ``--help``...)."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in _VALUE_FLAGS or name in _SOLO_FLAGS:
            return name
    return None


def split_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides) of ``args``."""
    flags: list[str] = []
    rest: list[str] = []
    it = iter(range(len(args)))
    for i in it:
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in _VALUE_FLAGS and "=" not in arg:
            flags.append(arg)
            if i + 1 < len(args):
                flags.append(args[i + 1])
                next(it, None)
        elif name in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in INFO_CHOICES:
            flags += [arg, args[i + 1]]
            next(it, None)
        elif name in _VALUE_FLAGS or name in _SOLO_FLAGS or arg in ("-m", "--multirun"):
            flags.append(arg)
        else:
            rest.append(arg)
    return flags, rest


def policy_file_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with every ``policy=<file.yaml>`` value turned into a search-path config
    name (see the module docstring). Idempotent; other overrides are returned unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out: list[str] = []
    linked = False
    theirs = searchpath_policies(overrides)
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.lstrip("+~") != "policy" or not _mentions_yaml(item):
            out.append(item)
            continue
        try:
            override = parser.parse_override(item)
        except HydraException as exc:
            raise ConfigError(str(exc).strip().splitlines()[0]) from None
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        names = [_link(v, theirs) if v.endswith(_YAML) else v for v in values]
        linked = linked or names != values
        out.append(f"{key}={','.join(names)}")
    if linked:
        out = _with_searchpath(out, f"file://{_shim_dir()}")
    return out


def _mentions_yaml(item: str) -> bool:
    return any(part.strip().rstrip(")").endswith(_YAML)
               for part in item.split("=", 1)[-1].split(","))


def searchpath_policies(overrides: Sequence[str]) -> set[str]:
    """Policy names the user's own ``hydra.searchpath`` folders hold (never reused)."""
    names: set[str] = set()
    for item in overrides:
        if item.split("=", 1)[0].lstrip("+") != _SEARCHPATH:
            continue
        for entry in _searchpath_entries(item):
            if entry.startswith("file://"):
                folder = Path(entry[len("file://"):]) / "policy"
                names |= {p.stem for p in folder.glob("*.y*ml")}
    return names


def _searchpath_entries(item: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        value = OverridesParser.create().parse_override(item).value()
    except HydraException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _link(value: str, theirs: set[str]) -> str:
    """The option name of policy file ``value`` in the shim folder (linking it on first use;
    never a bundled name, one of ``theirs`` or another file's)."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"policy={value}: no such file")
    resolved = path.resolve()
    if resolved in _names and _names[resolved] not in theirs:
        return _names[resolved]
    from moe_offload_lab.policies.config import available_policies

    folder = _shim_dir() / "policy"
    name = resolved.stem
    taken = set(available_policies()) | set(_names.values()) | theirs
    if name in taken or not name.replace("-", "").replace("_", "").isalnum():
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:6]
        name = f"{''.join(c if c.isalnum() or c in '-_' else '-' for c in name)}-{digest}"
    target = folder / f"{name}.yaml"
    if target.exists() or target.is_symlink():  # the same file, met again under another name
        target.unlink()
    try:
        os.symlink(resolved, target)
    except OSError:  # no symlinks here: a copy (a snapshot of the file)
        shutil.copyfile(resolved, target)
    _names[resolved] = name
    return name


def _shim_dir() -> Path:
    global _shim
    if _shim is None or not _shim.is_dir():
        _shim = Path(tempfile.mkdtemp(prefix="moe-sim-policies-"))
        (_shim / "policy").mkdir()
        atexit.register(shutil.rmtree, _shim, True)
    return _shim


def _with_searchpath(overrides: list[str], entry: str) -> list[str]:
    """``overrides`` with ``entry`` appended to the ``hydra.searchpath`` override (one added
    when there is none)."""
    for i, item in enumerate(overrides):
        if item.split("=", 1)[0].lstrip("+") == _SEARCHPATH:
            paths = _searchpath_entries(item)
            if entry not in paths:
                paths.append(entry)
            overrides[i] = f"{item.split('=', 1)[0]}=[{','.join(_quote(p) for p in paths)}]"
            return overrides
    return [*overrides, f"{_SEARCHPATH}=[{_quote(entry)}]"]


def _quote(path: str) -> str:
    """A search-path entry as an element of a Hydra list override."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
