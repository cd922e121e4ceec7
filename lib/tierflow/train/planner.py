"""``strategy: auto``: single, ddp, fsdp or pipeline, chosen from data and model size.

The rule, in order (``tierflow plan-train CONFIG`` prints which line decided):

1. **Memory per device** for training a model whole: parameters, gradients and the
   optimizer's state (AdamW: 16 bytes per fp32 parameter; SGD with momentum: 12), times a
   1.5 allowance for activations and buffers, against the per-device budget
   (``device_memory_gb``, else the GPU's memory or a quarter of the machine's RAM over
   the CPU workers).
2. **It fits**: data decides. Up to ``SINGLE_MAX_ROWS`` training rows, or with one
   worker, ``single`` (one process, no communication); above, ``ddp`` over the workers.
3. **It does not fit**: ``fsdp`` when sharding does fit (each worker holds 1/W of the
   parameters, gradients and optimizer state, plus the largest layer gathered whole while
   it runs); else ``pipeline`` when the model splits into two stages and the larger stage
   fits whole on a device; else an error naming the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierflow.config.training import TrainingConfig
from tierflow.errors import ConfigError

SINGLE_MAX_ROWS = 200_000
ALLOWANCE = 1.5
_BYTES_PER_PARAM = {"adamw": 16, "sgd": 12}


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of a model: all of it, its largest layer, its pipeline stages."""

    params: int
    largest_layer: int
    stages: tuple[int, ...] = ()  # empty: the model cannot be split


@dataclass(frozen=True)
class TrainPlan:
    """The chosen strategy and why."""

    strategy: str
    workers: int
    use_gpu: bool
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def explain(self) -> str:
        """Human-readable decision."""
        lines = [f"strategy: {self.strategy} on {self.workers} worker(s)"
                 f"{' with GPUs' if self.use_gpu else ' on CPUs'}"]  # fmt: skip
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def model_size(model: Any) -> ModelSize:
    """Count a built model's parameters (and its stages' if it has ``stages()``)."""
    total = sum(p.numel() for p in model.parameters())
    largest = 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        largest = max(largest, own)
    stages: tuple[int, ...] = ()
    if hasattr(model, "stages"):
        stages = tuple(sum(p.numel() for p in s.parameters()) for s in model.stages())
    return ModelSize(total, largest, stages)


def _gb(n_bytes: float) -> float:
    return round(n_bytes / 1024**3, 4)


def plan_training(
    config: TrainingConfig,
    *,
    train_rows: int,
    size: ModelSize,
    gpus: int,
    device_memory_bytes: float,
) -> TrainPlan:
    """Choose the strategy for ``config`` (see the module doc).

    Args:
        config: The training config (its ``strategy`` may force a choice).
        train_rows: Rows in the training split.
        size: The model's parameter counts.
        gpus: GPUs available to the run (0: train on CPUs).
        device_memory_bytes: Memory budget of one device (GPU, or a CPU worker's share).
    """
    use_gpu = bool(gpus) if config.use_gpu == "auto" else bool(config.use_gpu)
    per_param = _BYTES_PER_PARAM[config.optimizer.name]
    whole = size.params * per_param * ALLOWANCE
    workers = config.workers
    numbers = {
        "train_rows": train_rows,
        "params": size.params,
        "largest_layer_params": size.largest_layer,
        "stage_params": list(size.stages),
        "memory_whole_gb": _gb(whole),
        "device_budget_gb": _gb(device_memory_bytes),
        "workers": workers,
        "gpus": gpus,
    }
    reasons = [
        f"training a model whole needs {_gb(whole)} GiB per device "
        f"({size.params:,} parameters x {per_param} B x {ALLOWANCE}); the budget is "
        f"{_gb(device_memory_bytes)} GiB"
    ]
    if config.strategy != "auto":
        reasons.append(f"strategy {config.strategy} is set in the config")
        n = 1 if config.strategy == "single" else workers
        return TrainPlan(config.strategy, n, use_gpu, reasons, numbers)
    if whole <= device_memory_bytes:
        if workers == 1 or train_rows <= SINGLE_MAX_ROWS:
            why = "one worker" if workers == 1 else f"{train_rows:,} rows <= {SINGLE_MAX_ROWS:,}"
            reasons.append(f"it fits, and the data is small ({why}): single")
            return TrainPlan("single", 1, use_gpu, reasons, numbers)
        reasons.append(f"it fits; {train_rows:,} rows > {SINGLE_MAX_ROWS:,}: ddp")
        return TrainPlan("ddp", workers, use_gpu, reasons, numbers)
    sharded = whole / workers + size.largest_layer * per_param * ALLOWANCE
    numbers["memory_fsdp_gb"] = _gb(sharded)
    if workers > 1 and sharded <= device_memory_bytes:
        reasons.append(
            f"it does not fit whole; sharded over {workers} workers it needs {_gb(sharded)} GiB "
            "(a 1/W share plus the largest layer gathered): fsdp"
        )
        return TrainPlan("fsdp", workers, use_gpu, reasons, numbers)
    if size.stages:
        stage = max(size.stages) * per_param * ALLOWANCE
        numbers["memory_stage_gb"] = _gb(stage)
        if stage <= device_memory_bytes:
            reasons.append(
                f"sharding needs {_gb(sharded)} GiB, more than the budget; the larger of the "
                f"model's two stages needs {_gb(stage)} GiB whole: pipeline on 2 workers"
            )
            return TrainPlan("pipeline", 2, use_gpu, reasons, numbers)
    raise ConfigError(
        f"training {config.name}: the model does not fit: whole {_gb(whole)} GiB, sharded "
        f"{_gb(sharded)} GiB, budget {_gb(device_memory_bytes)} GiB per device "
        "(more workers, a smaller model, or a larger device_memory_gb)"
    )
