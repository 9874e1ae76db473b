"""traces/atomic.py: whole files or none, the user's permissions, orphan temporaries removed,
output paths checked without creating anything."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from moe_offload_lab.traces.atomic import (
    atomic_path,
    check_output_file,
    check_output_folder,
    new_file_mode,
    umask,
    write_text,
)
from moe_offload_lab.traces.errors import ConfigError


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_get_the_users_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        assert umask() == mask and new_file_mode() == 0o666 & ~mask
        path = write_text(tmp_path / "a" / "out.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0o600


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    orphan = tmp_path / f".out.txt.{host}-{dead}.abc123.tmp"
    mine = tmp_path / f".out.txt.{host}-{os.getpid()}.xyz.tmp"  # a live writer's: kept
    other = tmp_path / f".out.txt.elsewhere-{dead}.q.tmp"  # another host's: not ours to judge
    for p in (orphan, mine, other):
        p.write_text("partial")
    write_text(tmp_path / "out.txt", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, other.name, "out.txt"])


def test_unwritable_targets_are_one_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path, tmp_path / "file" / "x.txt", Path("/proc/nope/x.txt")):
        with pytest.raises(ConfigError) as info:
            write_text(bad, "x")
        assert "\n" not in str(info.value)


def test_output_checks_create_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert check_output_file(tmp_path / "new" / "deeper" / "x.parquet") == \
        tmp_path / "new" / "deeper" / "x.parquet"
    assert check_output_folder(tmp_path / "run" / "a")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    for call, target, needle in (
            (check_output_file, tmp_path, "is a folder"),
            (check_output_file, tmp_path / "file" / "x", "is not a folder"),
            (check_output_folder, tmp_path / "file", "is not a folder"),
            (check_output_folder, Path("/proc/nope/run"), "cannot write")):
        with pytest.raises(ConfigError, match=needle):
            call(target)
    assert sorted(os.listdir(tmp_path)) == ["file"]
