"""Where a worker trains: its rank and device, and where its checkpoints go.

- :class:`RaySession`: a Ray Train worker. Checkpoints are reported to Ray Train's
  controller, which keeps the newest and hands the latest back to a restarted group.
- :class:`LocalSession`: a process started by ``horovodrun`` or ``torchrun``, outside
  Ray. Checkpoints are folders ``checkpoint_<step>`` in the run's folder, written whole
  under a temporary name and then renamed, so a reader never sees half of one.

A checkpoint is two files: ``state.pt`` (model, optimizer and schedule state, from the
strategy) and ``meta.json`` (epoch, next batch, step, history, preprocessing).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def write_checkpoint(folder: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a checkpoint's two files into ``folder``."""
    import torch

    torch.save(state, folder / STATE_FILE)
    (folder / META_FILE).write_text(json.dumps(meta))


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's ``(meta, state)``."""
    import torch

    meta = json.loads((folder / META_FILE).read_text())
    return meta, torch.load(folder / STATE_FILE, weights_only=False)


class Session:
    """A worker's place in the run (see the module doc)."""

    rank: int
    world: int

    def device(self, use_gpu: bool) -> Any:
        """The device this worker trains on: the CPU, or the first GPU."""
        import torch

        return torch.device("cuda", 0) if use_gpu else torch.device("cpu")

    def restore(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The checkpoint to continue from, as ``(meta, state)``, or None to start."""
        raise NotImplementedError

    def save(self, metrics: dict[str, Any], state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Keep a checkpoint (every worker calls it; rank 0's state is the whole one)."""
        raise NotImplementedError


class RaySession(Session):
    """A Ray Train worker; ``resume_path`` is an earlier run's checkpoint to start from."""

    def __init__(self, resume_path: str | None) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self._resume_path = resume_path

    def device(self, use_gpu: bool) -> Any:
        """Ray Train's device for this worker when it trains on a GPU."""
        if use_gpu:
            from ray.train.torch import get_device

            return get_device()
        return super().device(use_gpu)

    def restore(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Ray's latest checkpoint of this run (a restarted group), else the earlier run's.

        Ray Train v2 has no ``resume_from_checkpoint``: a run started again resumes from
        the checkpoint its driver found in the run's folder.
        """
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self._resume_path:
            checkpoint = ray.train.Checkpoint.from_directory(self._resume_path)
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return read_checkpoint(Path(folder))

    def save(self, metrics: dict[str, Any], state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Report the metrics, with the checkpoint from rank 0."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(Path(folder), state, meta)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class LocalSession(Session):
    """A process of ``horovodrun`` or ``torchrun``; checkpoints under ``folder``."""

    def __init__(self, folder: Path, rank: int, world: int, keep: int) -> None:
        self.folder, self.rank, self.world, self.keep = folder, rank, world, keep

    def device(self, use_gpu: bool) -> Any:
        """``cuda:LOCAL_RANK`` when it trains on a GPU."""
        if use_gpu:
            import torch

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return super().device(use_gpu)

    def checkpoints(self) -> list[Path]:
        """This run's complete checkpoints, oldest first."""
        found = sorted(self.folder.glob("checkpoint_*"))
        return [p for p in found if (p / META_FILE).is_file()]

    def restore(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The newest complete checkpoint in the folder."""
        found = self.checkpoints()
        return read_checkpoint(found[-1]) if found else None

    def save(self, metrics: dict[str, Any], state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Rank 0 keeps the checkpoint (and its metrics in ``progress.jsonl``).

        It is written as ``checkpoint_<step>``; the oldest beyond ``keep`` go.
        """
        if self.rank != 0:
            return
        with (self.folder / "progress.jsonl").open("a") as progress:
            progress.write(json.dumps(metrics, default=str) + "\n")
        final = self.folder / f"checkpoint_{int(meta['step']):09d}"
        partial = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=self.folder))
        write_checkpoint(partial, state, meta)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
