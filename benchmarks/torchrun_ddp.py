"""The peer of the training benchmark: the same DDP training, hand-written for torchrun.

``torchrun --nproc_per_node=2 benchmarks/torchrun_ddp.py DATA.npz OUT.json``: gloo, the
same MLP, the same global batches sliced across the ranks, AdamW; rank 0 writes the time
of every step.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main(data_path: str, out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    arrays = np.load(data_path)
    x, y = torch.tensor(arrays["x"]), torch.tensor(arrays["y"])
    hidden = [int(h) for h in arrays["hidden"]]
    layers, width = [], x.shape[1]
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    layers.append(torch.nn.Linear(width, 1))
    model = DistributedDataParallel(torch.nn.Sequential(*layers))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batch = int(arrays["batch"])
    share = batch // world
    order = np.random.default_rng(0).permutation(len(y))
    times = []
    began = time.perf_counter()
    for step in range(len(y) // batch):
        rows = torch.from_numpy(
            order[step * batch : (step + 1) * batch][rank * share : (rank + 1) * share]
        )
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[rows]).squeeze(-1), y[rows])
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    if rank == 0:
        Path(out_path).write_text(json.dumps(times))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
