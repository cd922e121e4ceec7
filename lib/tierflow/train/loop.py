"""The training loop each Ray Train worker runs, for every strategy.

- ``single``: one worker, the whole global batch.
- ``ddp``: ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU); each worker trains on
  its slice of the global batch and gradients are averaged, so a step equals the single
  worker's step on the whole batch.
- ``fsdp``: FSDP2 ``fully_shard`` on every layer and on the model (parameters, gradients
  and optimizer state sharded across workers); runs on CPU with gloo.
- ``pipeline``: the model's two stages (``model.stages()``) on two workers. Worker 0 runs
  the first stage and sends its activations; worker 1 runs the second, computes the loss,
  and sends the activations' gradient back. Each stage has its own optimizer. The step
  is the same computation as in one process, split across two.

Checkpoints (model, optimizer, schedule, preprocessing, epoch, next batch, step) are
written every ``checkpoint.every_steps`` steps and at each epoch's end; a restarted
worker group continues from the latest one with the same batches it would have seen.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tierflow.train")

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def _loss_fn(task: str) -> Any:
    import torch

    return torch.nn.BCEWithLogitsLoss() if task == "binary" else torch.nn.MSELoss()


def _optimizer(params: Any, cfg: dict[str, Any]) -> Any:
    import torch

    opt = cfg["optimizer"]
    if opt["name"] == "sgd":
        return torch.optim.SGD(
            params, lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"]
        )
    return torch.optim.AdamW(params, lr=opt["lr"], weight_decay=opt["weight_decay"])


def _scheduler(optimizer: Any, cfg: dict[str, Any], steps_per_epoch: int) -> Any:
    import torch

    opt = cfg["optimizer"]
    if opt["schedule"] == "cosine":
        total = max(1, cfg["epochs"] * steps_per_epoch)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if opt["schedule"] == "step":
        every = opt["step_every"] * steps_per_epoch
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=opt["gamma"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def train_loop(cfg: dict[str, Any]) -> None:  # noqa: PLR0912, PLR0915 - one loop, four strategies
    """Ray Train's ``train_loop_per_worker`` (``cfg`` is the ``train_loop_config``)."""
    import numpy as np
    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    from tierflow.train.data import batches_per_epoch, epoch_order, worker_slice
    from tierflow.train.models import build_model

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    strategy = cfg["strategy"]
    torch.manual_seed(cfg["seed"])
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, int(os.environ.get("TIERFLOW_TORCH_THREADS", "1"))))
    if cfg["use_gpu"]:
        from ray.train.torch import get_device

        device = get_device()
    else:
        device = torch.device("cpu")

    data = ray.get(cfg["data_ref"])
    # Arrays from the object store are read-only: copy them into tensors.
    x_train = torch.tensor(data["x"]["train"])
    y_train = torch.tensor(data["y"]["train"])
    model = build_model(cfg["model"]["name"], x_train.shape[1], dict(cfg["model"]["params"]))
    loss_fn = _loss_fn(cfg["task"])
    batch_size = cfg["batch_size"]
    steps_per_epoch = batches_per_epoch(len(y_train), batch_size)

    # --- wrap the model for the strategy -----------------------------------------------
    stage: Any = None
    if strategy == "pipeline":
        first, second = model.stages()
        stage = (first if rank == 0 else second).to(device)
        trained = stage
    elif strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = model.to(device)
        trained = DistributedDataParallel(
            model, device_ids=[device.index] if cfg["use_gpu"] else None
        )
    elif strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = model.to(device)
        mesh = init_device_mesh(device.type, (world,))
        for module in list(model.modules())[1:]:
            if any(True for _ in module.parameters(recurse=False)):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        trained = model
    else:
        model = model.to(device)
        trained = model
    optimizer = _optimizer(trained.parameters(), cfg)
    scheduler = _scheduler(optimizer, cfg, steps_per_epoch)

    # --- resume -------------------------------------------------------------------------
    start_epoch, start_batch, step = 0, 0, 0
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and cfg.get("resume_path"):
        checkpoint = ray.train.Checkpoint.from_directory(cfg["resume_path"])
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            meta = json.loads((Path(folder) / META_FILE).read_text())
            state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
        _load_state(strategy, rank, trained, model, optimizer, state)
        scheduler.load_state_dict(state["scheduler"][rank if strategy == "pipeline" else 0])
        start_epoch, start_batch, step = meta["epoch"], meta["next_batch"], meta["step"]
        history = meta["history"]
        # Printed, not logged: Ray forwards workers' stdout to the driver's log.
        print(f"[tierflow] rank {rank}: resumed from checkpoint at step {step} "  # noqa: T201
              f"(epoch {start_epoch}, batch {start_batch})", flush=True)  # fmt: skip

    def save(epoch: int, next_batch: int, metrics: dict[str, Any]) -> None:
        state = _gather_state(strategy, rank, world, trained, model, optimizer, scheduler)
        meta = {"epoch": epoch, "next_batch": next_batch, "step": step, "history": history,
                "preprocessor": data["preprocessor"], "strategy": strategy}  # fmt: skip
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(state, Path(folder) / STATE_FILE)
                (Path(folder) / META_FILE).write_text(json.dumps(meta))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics, checkpoint=None)

    def forward_loss(rows: Any) -> tuple[Any, int]:
        """The loss of ``rows`` (a tensor of indices) and how many rows it covers."""
        xb, yb = x_train[rows].to(device), y_train[rows].to(device)
        return loss_fn(trained(xb), yb), len(rows)

    began = time.perf_counter()
    for epoch in range(start_epoch, cfg["epochs"]):
        order = torch.from_numpy(epoch_order(len(y_train), cfg["seed"], epoch))
        first = start_batch if epoch == start_epoch else 0
        for batch in range(first, steps_per_epoch):
            optimizer.zero_grad(set_to_none=True)
            if strategy == "pipeline":
                rows = order[batch * batch_size : (batch + 1) * batch_size]
                loss_value = _pipeline_step(stage, rank, x_train, y_train, rows, loss_fn, device)
            else:
                if strategy in ("ddp", "fsdp"):
                    rows = torch.from_numpy(
                        np.asarray(worker_slice(order.numpy(), batch, batch_size, rank, world))
                    )
                else:
                    rows = order[batch * batch_size : (batch + 1) * batch_size]
                loss, _n = forward_loss(rows)
                loss.backward()
                loss_value = loss.detach()
                if strategy in ("ddp", "fsdp"):
                    dist.all_reduce(loss_value)
                    loss_value = loss_value / world
            optimizer.step()
            scheduler.step()
            step += 1
            history.append({"step": step, "epoch": epoch, "loss": float(loss_value),
                            "seconds": time.perf_counter() - began})  # fmt: skip
            if step % cfg["checkpoint"]["every_steps"] == 0 and batch + 1 < steps_per_epoch:
                save(epoch, batch + 1, {"step": step, "loss": float(loss_value)})
            if cfg.get("stop_after_step") and step >= cfg["stop_after_step"]:
                return
            if cfg.get("slow_steps_s"):
                time.sleep(cfg["slow_steps_s"])
        valid = _evaluate(strategy, rank, trained, stage, data, "valid", loss_fn, device)
        history.append({"step": step, "epoch": epoch, "valid_loss": valid})
        save(epoch + 1, 0, {"step": step, "epoch": epoch, "valid_loss": valid,
                            "seconds": time.perf_counter() - began})  # fmt: skip


def _pipeline_step(
    stage: Any, rank: int, x: Any, y: Any, rows: Any, loss_fn: Any, device: Any
) -> Any:
    """One step of the two-stage pipeline; returns the loss (on both ranks)."""
    import torch
    import torch.distributed as dist

    if rank == 0:
        hidden = stage(x[rows].to(device))
        dist.send(hidden.detach().contiguous(), dst=1)
        grad = torch.empty_like(hidden)
        dist.recv(grad, src=1)
        hidden.backward(grad)
        loss = torch.zeros((), device=device)
        dist.recv(loss, src=1)
        return loss
    shape = (len(rows), x.shape[1], _width(stage))
    hidden = torch.empty(shape, device=device)
    dist.recv(hidden, src=0)
    hidden.requires_grad_(True)
    loss = loss_fn(stage(hidden), y[rows].to(device))
    loss.backward()
    assert hidden.grad is not None
    dist.send(hidden.grad.contiguous(), dst=0)
    dist.send(loss.detach().contiguous(), dst=0)
    return loss.detach()


def _width(stage: Any) -> int:
    """The token width the second stage expects (its first linear layer's input)."""
    import torch

    for module in stage.modules():
        if isinstance(module, torch.nn.Linear):
            return int(module.in_features)
    raise ValueError("the second pipeline stage has no linear layer to infer its width")


def _evaluate(
    strategy: str,
    rank: int,
    trained: Any,
    stage: Any,
    data: Any,
    split: str,
    loss_fn: Any,
    device: Any,
) -> float:
    """The mean loss on a split (every rank takes part; the value is the same on all)."""
    import torch
    import torch.distributed as dist

    if split not in data["x"]:
        return float("nan")
    x = torch.tensor(data["x"][split])
    y = torch.tensor(data["y"][split])
    if len(y) == 0:
        return float("nan")
    with torch.no_grad():
        if strategy == "pipeline":
            if rank == 0:
                hidden = stage(x.to(device))
                dist.send(hidden.contiguous(), dst=1)
                loss = torch.zeros((), device=device)
                dist.recv(loss, src=1)
            else:
                hidden = torch.empty((len(y), x.shape[1], _width(stage)), device=device)
                dist.recv(hidden, src=0)
                loss = loss_fn(stage(hidden), y.to(device))
                dist.send(loss.contiguous(), dst=0)
            return float(loss)
        return float(loss_fn(trained(x.to(device)), y.to(device)))


def _gather_state(
    strategy: str, rank: int, world: int, trained: Any, model: Any, optimizer: Any, scheduler: Any
) -> dict[str, Any]:
    """Full (unsharded) model and optimizer state, on rank 0 (every rank must call it)."""
    import torch.distributed as dist

    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        model_state = get_model_state_dict(model, options=options)
        optim_state = get_optimizer_state_dict(model, optimizer, options=options)
        return {"model": model_state, "optimizer": optim_state,
                "scheduler": [scheduler.state_dict()]}  # fmt: skip
    if strategy == "pipeline":
        mine = {"model": trained.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}  # fmt: skip
        gathered: list[Any] = [None] * world if rank == 0 else []
        dist.gather_object(mine, gathered if rank == 0 else None, dst=0)
        if rank != 0:
            return {}
        return {
            "model": {"stages": [g["model"] for g in gathered]},
            "optimizer": [g["optimizer"] for g in gathered],
            "scheduler": [g["scheduler"] for g in gathered],
        }
    inner = trained.module if strategy == "ddp" else trained
    return {"model": inner.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": [scheduler.state_dict()]}  # fmt: skip


def _load_state(
    strategy: str, rank: int, trained: Any, model: Any, optimizer: Any, state: dict[str, Any]
) -> None:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        set_model_state_dict(model, state["model"], options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
        return
    if strategy == "pipeline":
        trained.load_state_dict(state["model"]["stages"][rank])
        optimizer.load_state_dict(state["optimizer"][rank])
        return
    inner = trained.module if strategy == "ddp" else trained
    inner.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
