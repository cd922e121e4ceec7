"""Training strategies on a GPU: samples/s, step time, peak memory and model FLOPs utilisation.

Run by ``scripts/gpu_check.sh`` under ``torchrun``, one process per GPU. It needs only
PyTorch: it drives tierflow's strategy modules (:mod:`tierflow.train.strategies`) and the
transformer of :mod:`tierflow.train.models` directly, on generated data (no Ray, no
Delta, no network), so it runs on a machine that has nothing else. Each strategy trains
``--steps`` steps after ``--warmup`` untimed ones on the same global batches:

- ``ddp``: DistributedDataParallel over the GPUs (NCCL), each a ``1/W`` slice.
- ``fsdp``: FSDP2 ``fully_shard`` on every layer, over the GPUs.
- ``pipeline``: the encoder and the decoder on the two ranks of each pair (an even
  number of GPUs), micro-batched (``--microbatches``, one run each: 1 is the blocking
  split with no overlap, so the others show what the schedule gains) with ``--schedule``.

Model FLOPs per sample are counted as a transformer's forward and backward (6 per
parameter per token, plus attention's ``12 * layers * tokens**2 * d_model``), against the
GPU's dense TF32 peak where it is known (training runs in fp32 with TF32 matmuls).
Rank 0 prints a JSON line per strategy and writes ``gpu.md`` and ``gpu.json`` to
``--out``. On a machine without a GPU it runs on the CPU with gloo (small sizes), which
is how the script is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: Dense TF32 tensor-core peak, FLOP/s, by a substring of the device's name.
PEAK_TF32 = {"H200": 494.7e12, "H100": 494.7e12, "A100": 156e12, "L40S": 183e12, "L4": 60e12}


def model_flops_per_sample(params: int, tokens: int, layers: int, width: int) -> float:
    """Training FLOPs per sample: 6 per parameter per token, plus attention's scores."""
    return 6.0 * params * tokens + 12.0 * layers * tokens * tokens * width


def check(
    name: str, args: argparse.Namespace, device: Any, microbatches: int = 1
) -> dict[str, Any] | None:
    """Train ``args.steps`` timed steps with strategy ``name``; rank 0's figures."""
    import torch
    import torch.distributed as dist

    from tierflow.train.models import build_model
    from tierflow.train.strategies import strategy_class
    from tierflow.train.strategies.base import StrategyOptions

    rank, world = dist.get_rank(), dist.get_world_size()
    staged = name == "pipeline"
    if staged and world % 2:
        why = f"the pipeline needs an even number of processes (GPUs), not {world}"
        return {"strategy": name, "microbatches": microbatches, "skipped": why}
    params = {"d_model": args.d_model, "heads": args.heads, "layers": args.layers}
    torch.manual_seed(0)
    model = build_model("transformer", args.features, params)
    total_params = sum(p.numel() for p in model.parameters())
    options = StrategyOptions(microbatches=microbatches, schedule=args.schedule)
    strategy = strategy_class(name)(rank, world, device, options)
    strategy.prepare(model)
    optimizer = strategy.wrap_optimizer(torch.optim.AdamW(strategy.parameters(), lr=1e-4))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(args.batch, args.features, generator=generator),
         (torch.rand(args.batch, generator=generator) > 0.5).float())
        for _ in range(4)
    ]  # fmt: skip
    part, parts = strategy.batch_share
    share = args.batch // parts
    pending: list[Any] = []

    def one_step(i: int) -> None:
        x, y = batches[i % len(batches)]
        x, y = x[part * share : (part + 1) * share], y[part * share : (part + 1) * share]
        optimizer.zero_grad()
        loss = strategy.forward_backward(x.to(device), y.to(device), loss_fn)
        optimizer.step()
        pending.append(loss)
        if len(pending) >= 32:  # reduced in groups, as the training loop does
            strategy.reduce_losses(pending)
            pending.clear()

    for i in range(args.warmup):
        one_step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.steps):
        began = time.perf_counter()
        one_step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    losses = strategy.reduce_losses(pending) if pending else []
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    step = statistics.median(times)
    flops = model_flops_per_sample(total_params, args.features, args.layers, args.d_model)
    achieved = flops * args.batch / step
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_flops = next((v for k, v in PEAK_TF32.items() if k in name_of_device), None)
    gpus = world
    return {
        "strategy": name, "microbatches": microbatches if staged else None,
        "device": name_of_device, "processes": gpus,
        "global_batch": args.batch, "params": total_params, "step_ms": step * 1e3,
        "samples_per_s": args.batch / step, "peak_memory_gib": peak / 1024**3 if peak else None,
        "model_tflops": achieved / 1e12, "last_loss": losses[-1] if losses else None,
        "mfu": achieved / (peak_flops * gpus) if peak_flops else None,
    }  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="ddp,fsdp,pipeline")
    parser.add_argument(
        "--microbatches",
        default="1,4,8",
        help="the pipeline's micro-batches per step, one run each (1: no overlap)",
    )
    parser.add_argument("--schedule", default="1f1b", choices=("gpipe", "1f1b"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024, help="global batch")
    parser.add_argument("--features", type=int, default=64, help="tokens per sample")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/gpu")
    parser.add_argument("--name", default="gpu", help="the results' file name, without suffix")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    gpu = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dist.init_process_group("nccl" if gpu else "gloo")
    rows = []
    try:
        runs = [(n, 1) for n in args.strategies.split(",") if n != "pipeline"]
        if "pipeline" in args.strategies.split(","):
            runs += [("pipeline", int(m)) for m in args.microbatches.split(",")]
        for name, microbatches in runs:
            row = check(name, args, device, microbatches)
            if dist.get_rank() == 0 and row is not None:
                print(json.dumps(row), flush=True)
                rows.append(row)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    if rows:
        write(rows, Path(args.out), args.name)
    return 0


def write(rows: list[dict[str, Any]], out: Path, name: str) -> None:
    """``<name>.json`` and ``<name>.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    # The shape of every results file (benchmarks.summary reads the rows of each).
    (out / f"{name}.json").write_text(json.dumps({"name": name, "rows": rows}, indent=2))

    def cell(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"## {name}", "", "| strategy | device | processes | global batch | params | step ms | "
             "samples/s | peak GiB | model TFLOP/s | MFU |", "|---|" + "---|" * 9]  # fmt: skip
    for r in rows:
        label = r["strategy"]
        if r.get("microbatches"):
            label += f", {r['microbatches']} micro-batch{'es' if r['microbatches'] > 1 else ''}"
        if "skipped" in r:
            lines.append(f"| {label} | {r['skipped']} |" + " |" * 8)
            continue
        lines.append(
            f"| {label} | {r['device']} | {r['processes']} | {r['global_batch']} | "
            f"{r['params']:,} | {r['step_ms']:.2f} | {r['samples_per_s']:,.0f} | "
            f"{cell(r['peak_memory_gib'], '.2f')} | {r['model_tflops']:.3g} | "
            f"{cell(r['mfu'], '.1%')} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
