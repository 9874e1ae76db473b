"""Build the bundled FLAME-MoE-290M traces from a copy of the public dataset's files.

    python -m moe_offload_lab.traces.bundled.flame SRC [--out-dir traces/bundled]

``SRC`` is a folder in the layout of the excerpt described in ``traces/bundled/README.md``
(``layer02.pt .. layer09.pt``, ``decoder_first10/posPP_layerNN.pt``, ``LICENSE``). Writes
``flame-moe-290m.parquet`` (the 2,048-token stream, requests cut at the end-of-text token and into
512-token windows, see :mod:`traces.importers.flame`), ``flame-moe-290m-first10.parquet`` (the
first 10 positions of 64 sequences, one request each) and ``flame-moe-290m.LICENSE.txt`` (the
dataset's Apache-2.0 licence). Needs torch (the files are torch pickles).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from moe_offload_lab.traces.errors import ConfigError, run_command

NAME = "flame-moe-290m"


def build(source: Path, out_dir: Path) -> list[Path]:
    """Import both layouts from ``source`` and write the bundled files into ``out_dir``."""
    from moe_offload_lab.traces.importers.flame import import_flame

    licence = source / "LICENSE"
    if not licence.is_file():
        raise ConfigError(f"{source}: no LICENSE file; the dataset's licence must ship with it")
    stream = import_flame(source, "flame-moe-290m")
    first10 = import_flame(source / "decoder_first10", "flame-moe-290m")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [stream.save(out_dir / f"{NAME}.parquet"),
               first10.save(out_dir / f"{NAME}-first10.parquet")]
    target = out_dir / f"{NAME}.LICENSE.txt"
    shutil.copyfile(licence, target)
    return [*written, target]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)

    def run() -> int:
        for path in build(args.source, args.out_dir):
            print(f"wrote {path}")
        return 0

    return run_command("flame-bundle", run)


if __name__ == "__main__":
    sys.exit(main())
