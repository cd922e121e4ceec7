"""Training data: the snapshot at its exact version, split, preprocessed, sharded.

- **Read.** Ray Data reads the Delta snapshot at the recorded version (``read_delta``);
  the newest version is resolved once and recorded, so a resumed or resubmitted run reads
  the same rows.
- **Split.** Each row's split is decided by the portable split hash of the seed and its
  ``split_key`` (or its row number): the same rows in train/valid/test every time.
- **Preprocessing** is fitted on the training split only: numeric features standardised
  (mean and standard deviation), booleans 0/1, categoricals one-hot over the categories
  seen in training (unseen ones are all zeros), missing values 0 after scaling. It is a
  plain JSON-able object saved with every checkpoint and with the model.
- **Batches.** Epoch ``e`` shuffles the training rows with ``seed + e``; global batch
  ``i`` is rows ``[i*B, (i+1)*B)`` of that order; data-parallel worker ``r`` of ``W``
  takes the ``r``-th of ``W`` equal slices of it. So a global batch is the same rows on
  one worker or on many, which is what makes DDP comparable to single-process training.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tierflow.config.training import TrainingConfig
from tierflow.engines.base import split_hash


@dataclass
class Preprocessor:
    """Fitted preprocessing: scaling, booleans, one-hot encoding."""

    numeric: dict[str, tuple[float, float]]  # column -> (mean, std)
    boolean: list[str]
    categories: dict[str, list[str]]

    @classmethod
    def fit(cls, table: pa.Table, config: TrainingConfig) -> Preprocessor:
        """Fit on the training split."""
        numeric: dict[str, tuple[float, float]] = {}
        boolean: list[str] = []
        categories: dict[str, list[str]] = {}
        for name in config.features:
            column = table.column(name)
            if name in config.categorical:
                values = pc.unique(pc.cast(column, pa.string())).to_pylist()
                categories[name] = sorted(v for v in values if v is not None)
            elif pa.types.is_boolean(column.type):
                boolean.append(name)
            else:
                values = pc.cast(column, pa.float64())
                mean = pc.mean(values).as_py()
                std = pc.stddev(values).as_py()
                numeric[name] = (
                    float(mean or 0.0),
                    float(std) if std and math.isfinite(std) and std > 0 else 1.0,
                )
        return cls(numeric, boolean, categories)

    @property
    def width(self) -> int:
        """Columns of the transformed matrix."""
        return len(self.numeric) + len(self.boolean) + sum(len(c) for c in self.categories.values())

    def transform(self, table: pa.Table) -> np.ndarray:
        """The feature matrix (float32)."""
        parts = []
        for name, (mean, std) in self.numeric.items():
            values = pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
            scaled = (np.asarray(values, dtype=np.float64) - mean) / std
            parts.append(np.nan_to_num(scaled, nan=0.0))
        for name in self.boolean:
            values = pc.fill_null(pc.cast(table.column(name), pa.float64()), 0.0)
            parts.append(values.to_numpy(zero_copy_only=False))
        for name, cats in self.categories.items():
            values = pc.cast(table.column(name), pa.string()).to_pylist()
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((len(values), len(cats)))
            for row, value in enumerate(values):
                if value in index:
                    onehot[row, index[value]] = 1.0
            parts.extend(onehot.T)
        return np.stack(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"numeric": self.numeric, "boolean": self.boolean, "categories": self.categories}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        """The inverse of :meth:`to_dict`."""
        numeric = {k: (float(v[0]), float(v[1])) for k, v in data["numeric"].items()}
        return cls(numeric, list(data["boolean"]), dict(data["categories"]))


@dataclass
class Splits:
    """Preprocessed matrices and labels of each split, plus the fitted preprocessing."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    preprocessor: Preprocessor
    version: int
    rows: dict[str, int]

    def save(self, folder: Path) -> None:
        """Write to ``folder`` (``splits.npz`` and ``splits.json``), for a process outside Ray."""
        arrays = {f"{kind}_{name}": part for kind, parts in (("x", self.x), ("y", self.y))
                  for name, part in parts.items()}  # fmt: skip
        np.savez(folder / "splits.npz", allow_pickle=False, **arrays)
        about = {"preprocessor": self.preprocessor.to_dict(), "version": self.version,
                 "rows": self.rows}  # fmt: skip
        (folder / "splits.json").write_text(json.dumps(about))

    @classmethod
    def load(cls, folder: Path) -> Splits:
        """The inverse of :meth:`save`."""
        about = json.loads((folder / "splits.json").read_text())
        with np.load(folder / "splits.npz") as arrays:
            x = {k.removeprefix("x_"): arrays[k] for k in arrays.files if k.startswith("x_")}
            y = {k.removeprefix("y_"): arrays[k] for k in arrays.files if k.startswith("y_")}
        pre = Preprocessor.from_dict(about["preprocessor"])
        return cls(x, y, pre, int(about["version"]), dict(about["rows"]))


def snapshot_version(path: str, version: int | None) -> int:
    """The version to read: the configured one, else the newest (to be recorded)."""
    if version is not None:
        return version
    from tierflow.storage import delta_table

    return int(delta_table(path).version())


def read_snapshot(path: str, version: int, columns: list[str]) -> pa.Table:
    """The snapshot's columns at ``version``, read by Ray Data."""
    import pyarrow.fs as pafs
    import ray.data

    from tierflow.storage import arrow_location, delta_path, storage_options

    # Read tasks run on the cluster: they get the store's settings with the work. The
    # dataset's file paths are relative to the table, so the filesystem is rooted there.
    filesystem, root = arrow_location(path)
    if filesystem is not None:
        filesystem = pafs.SubTreeFileSystem(root, filesystem)
    dataset = ray.data.read_delta(
        delta_path(path), version=version, columns=columns,
        storage_options=storage_options(path), filesystem=filesystem,
    )  # fmt: skip
    return pa.concat_tables(
        [pa.Table.from_pandas(b) if not isinstance(b, pa.Table) else b
         for b in dataset.iter_batches(batch_format="pyarrow", batch_size=None)]
    ) if dataset.count() else pa.table({c: [] for c in columns})  # fmt: skip


def training_columns(config: TrainingConfig) -> list[str]:
    """The snapshot columns a run reads: features, label, split key and split column."""
    wanted = [*config.features, config.label, config.split_key, config.split_column]
    return list(dict.fromkeys(c for c in wanted if c))


def split_rows(table: pa.Table, config: TrainingConfig) -> dict[str, pa.Table]:
    """Rows per split: the ``split_column``'s values, else the split hash.

    The hash is of ``split_key`` (or of the row number) and the seed.
    """
    if config.split_column:
        named = table.column(config.split_column)
        found = set(pc.unique(named).to_pylist())
        unknown = found - {"train", "valid", "test"}
        if unknown or "train" not in found:
            raise ValueError(
                f"split column {config.split_column!r} must hold train (and valid, test), "
                f"found {sorted(map(str, found))}"
            )
        return {
            name: table.filter(pc.equal(named, name))
            for name in ("train", "valid", "test")
            if name in found
        }
    if config.split_key:
        keys = [str(v) for v in table.column(config.split_key).to_pylist()]
    else:
        keys = [str(i) for i in range(table.num_rows)]
    bounds = []
    edge = 0.0
    for name, share in config.split.items():
        edge += share
        bounds.append((name, edge))
    chosen: dict[str, list[int]] = {name: [] for name in config.split}
    for row, key in enumerate(keys):
        h = split_hash(config.seed, [key])
        for name, upper in bounds:
            if h < upper or name == bounds[-1][0]:
                chosen[name].append(row)
                break
    return {name: table.take(pa.array(rows, pa.int64())) for name, rows in chosen.items()}


def prepare(table: pa.Table, config: TrainingConfig, version: int) -> Splits:
    """Split, fit preprocessing on train, transform every split."""
    labelled = table.filter(pc.is_valid(table.column(config.label)))
    # A stable row order whatever the file layout: by split key, else as read.
    if config.split_key:
        labelled = labelled.sort_by([(config.split_key, "ascending")])
    parts = split_rows(labelled, config)
    pre = Preprocessor.fit(parts["train"], config)
    x = {name: pre.transform(t) for name, t in parts.items()}
    y = {
        name: np.asarray(
            pc.cast(t.column(config.label), pa.float32()).to_numpy(zero_copy_only=False),
            dtype=np.float32,
        )
        for name, t in parts.items()
    }
    return Splits(x, y, pre, version, {n: t.num_rows for n, t in parts.items()})


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The training rows' order in ``epoch``."""
    return np.random.default_rng(seed + epoch).permutation(rows)


def batches_per_epoch(rows: int, batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped, the same on every worker)."""
    return rows // batch_size


def worker_slice(order: np.ndarray, batch: int, batch_size: int, rank: int, world: int) -> Any:
    """Row indices of global batch ``batch`` that data-parallel worker ``rank`` trains on."""
    rows = order[batch * batch_size : (batch + 1) * batch_size]
    share = batch_size // world
    return rows[rank * share : (rank + 1) * share]
