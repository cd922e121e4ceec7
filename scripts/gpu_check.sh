#!/usr/bin/env bash
# Training strategies (DDP over NCCL, FSDP2, the two-stage pipeline) on this machine's GPUs,
# one process per GPU under torchrun: samples/s, step time, peak memory and model FLOPs
# utilisation, written to benchmarks/results/<date>/gpu.{md,json} (or $OUT). Needs only
# PyTorch (no Ray, Delta or network). Without a GPU it runs the same on the CPU with gloo,
# $PROCS processes (2), small sizes: how the script is tested. Extra arguments go to
# benchmarks/gpu_check.py (--steps, --batch, --features, --d-model, --heads, --layers).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=.venv/bin/python
gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
out=${OUT:-benchmarks/results/$(date -u +%F)}
if [ "$gpus" -gt 0 ]; then
  procs=$gpus
  sizes=()
else
  procs=${PROCS:-2}
  sizes=(--steps 3 --warmup 1 --batch 32 --features 8 --d-model 16 --heads 2 --layers 1)
fi
echo "[gpu_check] $gpus GPU(s); $procs process(es); results in $out" >&2
PYTHONPATH=lib:. exec "$python" -m torch.distributed.run --standalone --nproc-per-node "$procs" \
  benchmarks/gpu_check.py --out "$out" "${sizes[@]}" "$@"
