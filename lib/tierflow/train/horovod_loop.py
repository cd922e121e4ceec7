"""``strategy: horovod``: data-parallel training with Horovod (gloo), an optional extra.

``tierflow train`` prepares the data as for every strategy, writes it to an ``.npz``
file, and runs ``horovodrun -np W -H localhost:W --gloo python -m
tierflow.train.horovod_loop RUN_DIR``. Each process takes its slice of every global
batch (the same slicing as DDP), ``hvd.DistributedOptimizer`` averages the gradients,
and rank 0 writes the final state, so a run follows the single-worker loss curve. It
does not use Ray (Ray Train v2 deprecates its Horovod trainer). Build it with
``make horovod``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(run_dir: str) -> int:
    """One Horovod process: train and, on rank 0, save ``state.pt`` and ``history.json``."""
    import horovod.torch as hvd  # type: ignore[import-not-found,import-untyped,unused-ignore]
    import numpy as np
    import torch

    from tierflow.train.data import batches_per_epoch, epoch_order, worker_slice
    from tierflow.train.loop import _loss_fn, _optimizer, _scheduler
    from tierflow.train.models import build_model

    folder = Path(run_dir)
    cfg: dict[str, Any] = json.loads((folder / "config.json").read_text())
    arrays = np.load(folder / "data.npz")
    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    torch.manual_seed(cfg["seed"])
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    x_train = torch.tensor(arrays["x_train"])
    y_train = torch.tensor(arrays["y_train"])
    model = build_model(cfg["model"]["name"], x_train.shape[1], dict(cfg["model"]["params"]))
    batch_size = cfg["batch_size"]
    steps = batches_per_epoch(len(y_train), batch_size)
    optimizer = _optimizer(model.parameters(), cfg)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    scheduler = _scheduler(optimizer, cfg, steps)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    loss_fn = _loss_fn(cfg["task"])
    history = []
    step = 0
    for epoch in range(cfg["epochs"]):
        order = epoch_order(len(y_train), cfg["seed"], epoch)
        for batch in range(steps):
            rows = torch.from_numpy(np.asarray(worker_slice(order, batch, batch_size, rank, world)))
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[rows]), y_train[rows])
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            mean = hvd.allreduce(loss.detach(), name="loss")  # averaged over the workers
            history.append({"step": step, "epoch": epoch, "loss": float(mean)})
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   folder / "state.pt")  # fmt: skip
        (folder / "history.json").write_text(json.dumps(history))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
