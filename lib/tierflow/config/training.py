"""Training runs (``conf/training/*.yaml``): snapshot, columns, model, strategy, checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from tierflow.config.jobs import Identifier
from tierflow.config.loader import FrozenModel

Strategy = Literal["auto", "single", "ddp", "fsdp", "pipeline", "horovod"]
SplitName = Literal["train", "valid", "test"]
_DEFAULT_SPLIT: dict[SplitName, float] = {"train": 0.8, "valid": 0.1, "test": 0.1}


class SnapshotConfig(FrozenModel):
    """The training snapshot: a Delta table, pinned to a version for reproducibility."""

    path: Annotated[str, Field(min_length=1)]  # relative to the data folder
    version: Annotated[int, Field(ge=0)] | None = None  # None: the newest, recorded in the run


class ModelConfig(FrozenModel):
    """A registered model factory and its keyword arguments.

    Built in: ``mlp`` (hidden: list of widths, dropout) and ``transformer`` (a small
    encoder over the features as tokens, then a decoder head: d_model, heads, layers).
    """

    name: Identifier
    params: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(FrozenModel):
    """AdamW or SGD with a constant, cosine or step schedule."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd only
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_every: Annotated[int, Field(ge=1)] = 1  # epochs, for the step schedule
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.5


class CheckpointConfig(FrozenModel):
    """Checkpoint every ``every_steps`` optimizer steps (and at each epoch's end)."""

    every_steps: Annotated[int, Field(ge=1)] = 200
    keep: Annotated[int, Field(ge=1)] = 2


class PipelineConfig(FrozenModel):
    """The pipeline strategy's schedule.

    Each data-parallel group's share of a global batch is cut into ``microbatches`` equal
    micro-batches, run in ``schedule`` order (GPipe: all forwards, then all backwards;
    1F1B: one forward, one backward).
    """

    microbatches: Annotated[int, Field(ge=1)] = 4
    schedule: Literal["gpipe", "1f1b"] = "1f1b"


class SearchParam(FrozenModel):
    """One setting searched by ``tierflow tune``: exactly one kind of range.

    ``choice`` draws one of the values per trial, ``grid`` runs every value (in each of
    the ``trials`` samples), ``uniform`` and ``loguniform`` draw a float in ``[low,
    high]``, ``randint`` an integer in ``[low, high)``.
    """

    choice: list[Any] | None = Field(default=None, min_length=1)
    grid: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        kinds = [k for k in ("choice", "grid", "uniform", "loguniform", "randint")
                 if getattr(self, k) is not None]  # fmt: skip
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of choice, grid, uniform, loguniform, randint "
                f"(got {', '.join(kinds) or 'none'})"
            )
        for kind in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: low must be below high, not {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: the range must be positive, not {list(self.loguniform)}")
        return self

    def values(self) -> list[Any]:
        """Values a trial may be given that bound the range (checked against the config)."""
        for kind in ("choice", "grid", "uniform", "loguniform"):
            if getattr(self, kind) is not None:
                return list(getattr(self, kind))
        assert self.randint is not None
        return [self.randint[0], self.randint[1] - 1]


class AshaConfig(FrozenModel):
    """ASHA early stopping of the trials of a search.

    After ``grace_period`` epochs, and at each rung after it, a trial whose validation
    loss is not in the best 1/``reduction_factor`` of the trials that reached that epoch
    is stopped.
    """

    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[int, Field(ge=2)] = 2


#: What a search may change: the optimizer, the model's parameters and how batches are
#: drawn. The data, its columns and split, the strategy and workers are the config's.
TUNABLE = ("optimizer.", "model.params.", "batch_size", "epochs", "shuffle_buffer", "seed")


class TuneConfig(FrozenModel):
    """``tierflow tune``: a search over settings of the training config.

    Settings are dotted keys (``optimizer.lr``, ``model.params.hidden``); each trial is a
    training run, ranked by its validation loss (lower is better).
    """

    trials: Annotated[int, Field(ge=1)] = 8
    concurrent: Annotated[int, Field(ge=1)] = 2
    space: dict[str, SearchParam] = Field(min_length=1)
    asha: AshaConfig | None = AshaConfig()  # None: every trial runs every epoch
    seed: int | None = None  # of the search's draws

    @model_validator(mode="after")
    def _tunable(self) -> TuneConfig:
        for key in self.space:
            if not any(key == t or (t.endswith(".") and key.startswith(t)) for t in TUNABLE):
                raise ValueError(
                    f"space: {key!r} cannot be searched; searchable: "
                    + ", ".join(t + "*" if t.endswith(".") else t for t in TUNABLE)
                )
        return self


class TrainingConfig(FrozenModel):
    """One training run of a model on a training snapshot."""

    name: Identifier
    description: str = ""
    snapshot: SnapshotConfig
    features: tuple[Identifier, ...] = Field(min_length=1)
    categorical: tuple[Identifier, ...] = ()  # one-hot encoded (fitted on the train split)
    label: Identifier
    task: Literal["binary", "regression"] = "binary"
    split: dict[SplitName, float] = Field(default_factory=lambda: dict(_DEFAULT_SPLIT))
    split_key: Identifier | None = None  # hashed for the split; default: the row order
    # Or a column of the snapshot holding each row's split (train/valid/test), e.g. a
    # time-based split made upstream; `split` shares are then ignored.
    split_column: Identifier | None = None
    model: ModelConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    epochs: Annotated[int, Field(ge=1)] = 2
    batch_size: Annotated[int, Field(ge=1)] = 256  # global: split across data-parallel workers
    # Streaming: training rows each shard's shuffle buffer holds (more mixes better).
    shuffle_buffer: Annotated[int, Field(ge=0)] = 10_000
    # Rows per block at most (default: whole row groups, cut where there are fewer than
    # 4 per shard): the unit of shards and of the shuffle.
    block_rows: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    strategy: Strategy = "auto"
    workers: Annotated[int, Field(ge=1)] = 2
    # Ray's placement of the workers: "pack" fills a node first (fast collectives on one
    # machine); "spread" puts them on different nodes where it can (a lost node takes
    # fewer workers with it; the restarted group packs onto what is left if it must).
    placement: Literal["pack", "spread"] = "pack"
    use_gpu: Literal["auto", True, False] = "auto"
    checkpoint: CheckpointConfig = CheckpointConfig()
    pipeline: PipelineConfig = PipelineConfig()
    max_failures: Annotated[int, Field(ge=0)] = 3
    storage_path: Annotated[str, Field(min_length=1)] = "models"  # under the data folder
    device_memory_gb: Annotated[float, Field(gt=0)] | None = None  # default: measured
    tune: TuneConfig | None = None  # the search of `tierflow tune`

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if abs(sum(self.split.values()) - 1.0) > 1e-9 or "train" not in self.split:
            raise ValueError(f"split must have train and sum to 1, not {self.split}")
        unknown = [c for c in self.categorical if c not in self.features]
        if unknown:
            raise ValueError(f"categorical column(s) {', '.join(unknown)} are not features")
        if self.split_column is not None and self.split_column in self.features:
            raise ValueError(f"the split column {self.split_column!r} is also a feature")
        if self.label in self.features:
            raise ValueError(f"the label {self.label!r} is also a feature")
        if self.tune is not None and self.split_column is None and not self.split.get("valid"):
            raise ValueError("tune ranks trials by their validation loss: give a valid split")
        if self.strategy == "pipeline":
            if self.workers % 2:
                raise ValueError(
                    "the pipeline strategy runs 2 stages in each data-parallel group: "
                    f"workers must be even, not {self.workers}"
                )
            share = self.batch_size // (self.workers // 2)
            if share % self.pipeline.microbatches:
                raise ValueError(
                    f"a data-parallel group's {share} rows of each batch must cut evenly into "
                    f"{self.pipeline.microbatches} micro-batches"
                )
        if self.batch_size % self.workers:
            # The data is laid out in `workers` shards whatever the strategy, so that a
            # global batch is the same rows on one worker or on many.
            raise ValueError(
                f"batch_size {self.batch_size} must split evenly across {self.workers} workers"
            )
        return self


def with_params(config: TrainingConfig, params: dict[str, Any]) -> TrainingConfig:
    """``config`` with dotted settings replaced (``{"optimizer.lr": 0.01}``), validated.

    Raises:
        pydantic.ValidationError: the result is not a valid config.
    """
    doc = config.model_dump()
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TrainingConfig.model_validate(doc)
