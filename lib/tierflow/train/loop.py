"""The training loop every worker runs, whatever the strategy and wherever it runs.

:func:`run` is the loop: it builds the model, lets the strategy
(:mod:`tierflow.train.strategies`) place it and take part in each step, and keeps
checkpoints through the session (:mod:`tierflow.train.session`). It never asks which
strategy it runs. :func:`train_loop` is Ray Train's entry to it;
:mod:`tierflow.train.horovod_loop` is ``horovodrun``'s.

Checkpoints (model, optimizer, schedule, preprocessing, epoch, next batch, step) are
written every ``checkpoint.every_steps`` steps and at each epoch's end; a restarted
worker group continues from the latest one with the same batches it would have seen.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from tierflow.config.training import OptimizerConfig, TrainingConfig
from tierflow.train.data import Splits
from tierflow.train.session import Session


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker is given: the run's config and the plan's decisions."""

    config: TrainingConfig
    strategy: str
    use_gpu: bool
    #: An earlier run's checkpoint to start from (Ray Train v2 has no resume of its own).
    resume_path: str | None = None


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


def make_scheduler(optimizer: Any, config: TrainingConfig, steps_per_epoch: int) -> Any:
    """The configured learning-rate schedule, stepped once per optimizer step."""
    import torch

    opt = config.optimizer
    if opt.schedule == "cosine":
        total = max(1, config.epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if opt.schedule == "step":
        every = opt.step_every * steps_per_epoch
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=opt.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: ``{"settings": WorkerSettings, "data": ref}``."""
    import ray

    from tierflow.train.session import RaySession

    settings: WorkerSettings = loop_config["settings"]
    run(settings, ray.get(loop_config["data"]), RaySession(settings.resume_path))


def run(settings: WorkerSettings, data: Splits, session: Session) -> None:
    """Train on this worker until the configured epochs are done (see the module doc)."""
    import numpy as np
    import torch

    from tierflow.train.data import batches_per_epoch, epoch_order, worker_slice
    from tierflow.train.models import build_model
    from tierflow.train.strategies import strategy_class

    config = settings.config
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, int(os.environ.get("TIERFLOW_TORCH_THREADS", "1"))))
    strategy = strategy_class(settings.strategy)(
        session.rank, session.world, session.device(settings.use_gpu)
    )
    # Arrays from the object store are read-only: copy them into tensors.
    x_train = torch.tensor(data.x["train"])
    y_train = torch.tensor(data.y["train"])
    strategy.prepare(build_model(config.model.name, x_train.shape[1], dict(config.model.params)))
    loss_fn = loss_function(config.task)
    batch_size = config.batch_size
    steps_per_epoch = batches_per_epoch(len(y_train), batch_size)
    optimizer = strategy.wrap_optimizer(make_optimizer(strategy.parameters(), config.optimizer))
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)

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
                "preprocessor": data.preprocessor.to_dict(), "strategy": strategy.name}  # fmt: skip
        session.save(metrics, state, meta)

    def evaluate(split: str) -> float:
        if split not in data.x or len(data.y[split]) == 0:
            return float("nan")
        return strategy.evaluate(torch.tensor(data.x[split]), torch.tensor(data.y[split]), loss_fn)

    part, parts = strategy.batch_share
    began = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        order = epoch_order(len(y_train), config.seed, epoch)
        first = start_batch if epoch == start_epoch else 0
        for batch in range(first, steps_per_epoch):
            optimizer.zero_grad(set_to_none=True)
            rows = torch.from_numpy(np.asarray(worker_slice(order, batch, batch_size, part, parts)))
            loss = strategy.reduce_loss(
                strategy.forward_backward(x_train[rows], y_train[rows], loss_fn)
            )
            optimizer.step()
            scheduler.step()
            step += 1
            history.append({"step": step, "epoch": epoch, "loss": float(loss),
                            "seconds": time.perf_counter() - began})  # fmt: skip
            if step % config.checkpoint.every_steps == 0 and batch + 1 < steps_per_epoch:
                save(epoch, batch + 1, {"step": step, "loss": float(loss)})
        valid = evaluate("valid")
        history.append({"step": step, "epoch": epoch, "valid_loss": valid})
        save(epoch + 1, 0, {"step": step, "epoch": epoch, "valid_loss": valid,
                            "seconds": time.perf_counter() - began})  # fmt: skip
