"""``scripts/gpu_check.sh``: the strategies (DDP, FSDP2, the two-stage pipeline) under
``torchrun`` on generated data, figures per strategy. Without a GPU it runs on the CPU
with gloo; with one (marker ``gpu``) it measures the GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import PROJECT

SCRIPT = str(PROJECT / "scripts" / "gpu_check.sh")


def run_check(out: Path, env: dict[str, str]) -> list[dict]:
    done = subprocess.run([SCRIPT], cwd=PROJECT, env=os.environ | env | {"OUT": str(out)},
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads((out / "gpu.json").read_text())["rows"]
    table = (out / "gpu.md").read_text()
    assert [r["strategy"] for r in rows] == ["ddp", "fsdp", "pipeline", "pipeline", "pipeline"]
    assert table.count("| pipeline, ") == 3 and "| ddp |" in table and "| fsdp |" in table
    return rows


def test_the_gpu_check_runs_every_strategy_on_the_cpu(tmp_path: Path) -> None:
    # Four processes: the pipeline runs as two data-parallel groups of two stages.
    rows = run_check(tmp_path, {"CUDA_VISIBLE_DEVICES": "", "PROCS": "4"})
    assert all(r["device"] == "cpu" and r["processes"] == 4 for r in rows)
    assert all(r["step_ms"] > 0 and r["samples_per_s"] > 0 for r in rows)
    assert [r["microbatches"] for r in rows] == [None, None, 1, 4, 8]
    # The same model, seed and global batches: each strategy ends at the same loss, the
    # pipeline with or without micro-batches.
    losses = [r["last_loss"] for r in rows]
    assert max(losses) - min(losses) < 1e-5 * abs(losses[0]), losses


@pytest.mark.gpu
def test_the_gpu_check_measures_the_gpus(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("marked gpu: run it where a GPU is")
    rows = run_check(tmp_path, {})
    measured = [r for r in rows if "skipped" not in r]
    assert all(r["peak_memory_gib"] and r["samples_per_s"] > 0 for r in measured)
