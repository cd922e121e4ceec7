"""The training loop every worker runs, whatever the strategy and wherever it runs.

:func:`run` is the loop: it builds the model, lets the strategy
(:mod:`tierflow.train.strategies`) place it and take part in each step, and keeps
checkpoints through the session (:mod:`tierflow.train.session`). It never asks which
strategy it runs. :func:`train_loop` is Ray Train's entry to it;
:mod:`tierflow.train.horovod_loop` is ``horovodrun``'s.

Each worker streams its shards of the snapshot (:mod:`tierflow.train.ingest`): a
data-parallel worker its own, one process (``single``, each pipeline stage) all of them;
global batch ``i`` is the same rows either way. Checkpoints (model, optimizer, schedule,
preprocessing, epoch, next batch, step) are written every ``checkpoint.every_steps``
steps and at each epoch's end; a restarted worker group continues from the latest one
with the same batches it would have seen (an epoch's stream is read again and its
trained batches skipped).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.config.training import OptimizerConfig, TrainingConfig
from tierflow.train.data import TrainingData
from tierflow.train.ingest import deal, shard_batches, split_chunks, steps_in_epoch
from tierflow.train.session import Session

#: Steps whose losses are read together (their all-reduces long done by then).
SETTLE_EVERY = 32


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker is given: the run's config and the plan's decisions."""

    config: TrainingConfig
    strategy: str
    use_gpu: bool
    #: An earlier run's checkpoint to start from (Ray Train v2 has no resume of its own).
    resume_path: str | None = None
    #: Where rank 0 keeps the step it is at, for the driver's progress line.
    live_path: str | None = None


def write_live(path: str | None, status: dict[str, Any]) -> None:
    """Rank 0's step, for the driver's progress line.

    Best effort: a worker on a host that does not see the run's folder has no progress
    to show, and trains all the same.
    """
    if path is None:
        return
    target = Path(path)
    try:
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_text(json.dumps(status))
        partial.replace(target)
    except OSError:
        pass


def loss_function(task: str) -> Any:
    """Binary cross-entropy on logits, or mean squared error."""
    import torch

    return torch.nn.BCEWithLogitsLoss() if task == "binary" else torch.nn.MSELoss()


def make_optimizer(params: Any, opt: OptimizerConfig) -> Any:
    """AdamW or SGD with momentum, as configured."""
    import torch

    if opt.name == "sgd":
        return torch.optim.SGD(
            params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


def make_scheduler(optimizer: Any, config: TrainingConfig, steps: list[int]) -> Any:
    """The configured learning-rate schedule, stepped once per optimizer step.

    ``steps`` are each epoch's steps: the cosine schedule spans all of them, the step
    schedule counts ``step_every`` times the first epoch's.
    """
    import torch

    opt = config.optimizer
    if opt.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, sum(steps)))
    if opt.schedule == "step":
        every = max(1, opt.step_every * steps[0])
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=opt.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: ``{"settings": WorkerSettings, "data": ...}``."""
    from tierflow.train.session import RaySession

    settings: WorkerSettings = loop_config["settings"]
    run(settings, loop_config["data"], RaySession(settings.resume_path))


def run(settings: WorkerSettings, data: TrainingData, session: Session) -> None:  # noqa: PLR0915
    """Train on this worker until the configured epochs are done (see the module doc)."""
    import torch

    from tierflow.train.models import build_model
    from tierflow.train.strategies import strategy_class
    from tierflow.train.strategies.base import StrategyOptions

    config = settings.config
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    from tierflow.settings import env_settings

    torch.set_num_threads(env_settings().torch_threads)
    options = StrategyOptions(config.pipeline.microbatches, config.pipeline.schedule)
    strategy = strategy_class(settings.strategy)(
        session.rank, session.world, session.device(settings.use_gpu), options
    )
    pre = data.preprocessor
    strategy.prepare(build_model(config.model.name, pre.width, dict(config.model.params)))
    loss_fn = loss_function(config.task)
    shards, local = config.workers, config.batch_size // config.workers
    part, parts = strategy.batch_share
    mine = [s for s in range(shards) if s % parts == part]
    steps = [steps_in_epoch(data.train_rows, config.seed, e, shards, local)
             for e in range(config.epochs)]  # fmt: skip
    optimizer = strategy.wrap_optimizer(make_optimizer(strategy.parameters(), config.optimizer))
    scheduler = make_scheduler(optimizer, config, steps)

    start_epoch, start_batch, step = 0, 0, 0
    history: list[dict[str, Any]] = []
    restored = session.restore()
    if restored is not None:
        meta, state = restored
        strategy.load(state, optimizer, scheduler)
        start_epoch, start_batch, step = meta["epoch"], meta["next_batch"], meta["step"]
        history = meta["history"]
        # Printed, not logged: Ray forwards workers' stdout to the driver's log.
        print(f"[tierflow] rank {session.rank}: resumed from checkpoint at step {step} "  # noqa: T201
              f"(epoch {start_epoch}, batch {start_batch})", flush=True)  # fmt: skip

    def save(epoch: int, next_batch: int, metrics: dict[str, Any]) -> None:
        state = strategy.state(optimizer, scheduler)
        meta = {"epoch": epoch, "next_batch": next_batch, "step": step, "history": history,
                "preprocessor": pre.to_dict(), "strategy": strategy.name}  # fmt: skip
        session.save(metrics, state, meta)

    def batches(epoch: int) -> Iterator[tuple[Any, Any]]:
        """This worker's share of each global batch: its shards' local batches, joined."""
        dealt = deal(data.train_rows, config.seed, epoch, shards)
        read = ", ".join(f"shard {s}: blocks {sorted(dealt[s])}" for s in mine)
        print(f"[tierflow] rank {session.rank} epoch {epoch} reads {read}", flush=True)  # noqa: T201
        streams = [
            shard_batches(data, dealt[s], config, seed=(config.seed, epoch, s),
                          local_batch=local, buffer_rows=config.shuffle_buffer)
            for s in mine
        ]  # fmt: skip
        for pieces in zip(*streams, strict=False):
            x = np.concatenate([p[0] for p in pieces])
            y = np.concatenate([p[1] for p in pieces])
            yield torch.from_numpy(x), torch.from_numpy(y)

    def evaluate(split: str) -> float:
        """The split's mean loss (data-parallel workers each take a fixed share of it)."""
        if not data.rows.get(split):
            return float("nan")
        share, of = strategy.eval_share
        blocks = [i for i in range(len(data.snapshot.blocks)) if i % of == share]
        total, rows = 0.0, 0.0
        for x, y in split_chunks(data, blocks, config, split):
            total += strategy.evaluate(torch.from_numpy(x), torch.from_numpy(y), loss_fn) * len(y)
            rows += float(len(y))
        if of > 1:
            total, rows = strategy.all_sum([total, rows])
        return total / rows if rows else float("nan")

    # Each step's loss is reduced later, a group of steps in one collective: reducing it
    # every step costs a collective a step (the curve is the same, step for step).
    pending: list[tuple[dict[str, Any], Any]] = []

    total_steps = sum(steps)

    def settle() -> None:
        if pending:
            values = strategy.reduce_losses([loss for _, loss in pending])
            for (entry, _), value in zip(pending, values, strict=True):
                entry["loss"] = value
            if session.rank == 0:
                last = pending[-1][0]
                status = {"step": last["step"], "total": total_steps,
                          "epoch": last["epoch"], "loss": last["loss"]}  # fmt: skip
                write_live(settings.live_path, status)
        pending.clear()

    began = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        first = start_batch if epoch == start_epoch else 0
        # A resumed epoch reads its stream again and skips the batches already trained.
        stream = itertools.islice(batches(epoch), first, steps[epoch])
        for batch, (x, y) in enumerate(stream, start=first):
            optimizer.zero_grad()  # set_to_none (the default): Horovod's takes no argument
            loss = strategy.forward_backward(x, y, loss_fn)
            optimizer.step()
            scheduler.step()
            step += 1
            entry = {"step": step, "epoch": epoch, "loss": math.nan,
                     "seconds": time.perf_counter() - began}  # fmt: skip
            history.append(entry)
            pending.append((entry, loss))
            if len(pending) >= SETTLE_EVERY:
                settle()
            if step % config.checkpoint.every_steps == 0 and batch + 1 < steps[epoch]:
                settle()
                save(epoch, batch + 1, {"step": step, "loss": entry["loss"]})
        settle()
        valid = evaluate("valid")
        history.append({"step": step, "epoch": epoch, "valid_loss": valid})
        save(epoch + 1, 0, {"step": step, "epoch": epoch, "valid_loss": valid,
                            "seconds": time.perf_counter() - began})  # fmt: skip
