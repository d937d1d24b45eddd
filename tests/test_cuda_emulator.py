"""Checks of the CPU emulation of CUDA (tests/cuda_emulator) itself, where its model decides what
the emulated kernel tests can catch."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def test_async_copies_land_only_at_their_wait(tmp_path):
    """cp.async may land any time before its wait: the emulation lands it at the wait, group by
    group, so a read of staged data before its wait sees the old contents (here -1)."""
    from cuda_emulator import build

    base = pathlib.Path(os.environ.get("LVMFAST_EMULATOR_BUILD", tmp_path))
    program = build.build_program(ROOT / "tests/cuda_emulator/async_copy_check.cu", [],
                                  base / "async_copy_check" / "check")
    seen = subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout.split()
    # before any wait; after wait_group 1: the first group, not the latest, not the uncommitted;
    # after wait_all: everything
    assert [float(v) for v in seen] == [-1, 10, -1, -1, 11, 12]
