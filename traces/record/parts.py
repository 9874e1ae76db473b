"""Work directory of a resumable recording: one finished batch per file.

The directory (``<output>.parts`` for the CLI) holds ``manifest.json``, a fingerprint of
everything that determines the recording (model, prompts, decode settings), and ``part-NNNNN.npz``
per finished batch, each written atomically. A rerun with the same fingerprint reuses the finished
batches; a different fingerprint is refused, so parts of two recordings never mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError

MANIFEST = "manifest.json"


class PartStore:
    """Finished batches of one recording, kept in ``directory`` under fingerprint ``key``."""

    def __init__(self, directory: str | Path, key: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        manifest = self.directory / MANIFEST
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != self.key:
                raise ConfigError(f"work directory {self.directory} belongs to a recording with "
                                  f"other arguments; delete it or rerun with the same arguments")
        elif self.directory.exists() and any(not p.name.endswith(".tmp")  # a killed write
                                             for p in self.directory.iterdir()):
            raise ConfigError(f"work directory {self.directory} exists and is not a recording's; "
                              f"delete it")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._atomic_write(manifest, json.dumps(self.key, sort_keys=True).encode())

    def _path(self, index: int) -> Path:
        return self.directory / f"part-{index:05d}.npz"

    def _atomic_write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def has(self, index: int) -> bool:
        """Whether batch ``index`` is finished."""
        return self._path(index).is_file()

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of finished batch ``index``."""
        with np.load(self._path(index)) as data:
            return {name: data[name] for name in data.files}

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store batch ``index`` (atomically: a crash leaves either the whole part or none)."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self._atomic_write(self._path(index), buffer.getvalue())

    def remove(self) -> None:
        """Delete the work directory (after the final trace is written)."""
        shutil.rmtree(self.directory, ignore_errors=True)
