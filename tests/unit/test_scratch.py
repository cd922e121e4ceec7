"""Scratch folders: named by their process, and what dead processes left is removed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tierflow.paths import scratch_dir


def test_a_dead_process_s_scratch_goes_and_a_live_one_s_stays() -> None:
    prefix = f"tierflow-test-scratch-{os.getpid()}x"
    base = Path(tempfile.gettempdir())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = base / f"{prefix}{int(dead.stdout)}-abc"
    (left / "inner").mkdir(parents=True)
    (left / "inner" / "spill.parquet").write_bytes(b"x" * 10)
    live = base / f"{prefix}{os.getppid()}-def"
    live.mkdir()
    unnamed = base / f"{prefix}notapid-ghi"
    unnamed.mkdir()
    try:
        mine = scratch_dir(prefix)
        assert mine.is_dir() and mine.name.startswith(f"{prefix}{os.getpid()}-")
        assert not left.exists()  # its process is gone
        assert live.is_dir() and unnamed.is_dir()  # a live process's, and not one of ours
        again = scratch_dir(prefix)
        assert mine.is_dir() and again != mine  # this process's own are never swept
    finally:
        for folder in base.glob(f"{prefix}*"):
            for path in sorted(folder.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            folder.rmdir()
