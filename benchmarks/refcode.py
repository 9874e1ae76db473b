"""Import another checkout of this repository as ``moe_offload_lab`` (for before/after benchmarks).

``use_checkout(path)`` must run before anything imports ``moe_offload_lab``: it puts a finder in
front of the installed (editable) one that maps the package and its four folders (``traces``,
``policies``, ``sim``, ``hw``) to ``path``'s copies. Benchmarks call it in a child process, so the
old and the new code never share an interpreter, for example with a checkout of an older commit
made by ``git worktree add <dir> <commit>``.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path

_FOLDERS = ("traces", "policies", "sim", "hw")


class _CheckoutFinder(MetaPathFinder):
    """Finds ``moe_offload_lab`` and ``moe_offload_lab.<folder>`` in one checkout."""

    def __init__(self, root: Path) -> None:
        self.roots = {"moe_offload_lab": root / "moe_offload_lab",
                      **{f"moe_offload_lab.{name}": root / name for name in _FOLDERS}}

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> ModuleSpec | None:
        folder = self.roots.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


def use_checkout(path: str | Path) -> Path:
    """Make ``moe_offload_lab`` resolve to the checkout at ``path``; returns its root."""
    root = Path(path).resolve()
    missing = [name for name in ("moe_offload_lab", *_FOLDERS) if not (root / name).is_dir()]
    if missing:
        raise SystemExit(f"{root} is not a checkout of this repository (no {', '.join(missing)})")
    if any(name == "moe_offload_lab" or name.startswith("moe_offload_lab.")
           for name in sys.modules):
        raise RuntimeError("use_checkout must run before moe_offload_lab is imported")
    sys.meta_path.insert(0, _CheckoutFinder(root))
    return root
