"""The online store contract: latest feature values per view and entity, plus checkpoints.

A write applies a batch of rows and, in the same atomic step, a checkpoint (the
materializer's progress, a consumer's applied offsets): either both land or neither.
A row never replaces one of a later window, so replays and retries are harmless. Values
expire ``ttl`` after they were written.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tierflow.errors import ServiceError


class StoreError(ServiceError):
    """The online store could not be reached or answered with an error."""


@dataclass(frozen=True)
class OnlineRow:
    """One entity's values of one view, computed for the window ending at ``window_end_us``."""

    entity: tuple[Any, ...]
    values: Mapping[str, Any]
    window_end_us: int


@dataclass(frozen=True)
class StoredValue:
    """What a read returns for one entity of one view."""

    values: dict[str, Any]
    window_end_us: int


def entity_key(entity: Sequence[Any]) -> str:
    """The storage key of an entity: its key values as compact JSON (types preserved)."""
    if len(entity) == 1 and type(entity[0]) is int:
        # The common case, on every online read: what json.dumps writes, without it.
        return f"[{entity[0]}]"
    return json.dumps(list(entity), separators=(",", ":"), ensure_ascii=False)


def encode_values(values: Mapping[str, Any]) -> str:
    """Values as compact JSON (the same bytes in every store)."""
    return json.dumps(dict(values), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class StaleCommitError(StoreError):
    """A partition commit was refused: the stored offset is not the one it started from.

    Another consumer has written the partition since this one loaded it (a rebalance
    this consumer has not seen yet). The writer must reload the partition.
    """


@dataclass(frozen=True)
class PartitionCommit:
    """A stream consumer's batch for one partition: values, window state and offset.

    Applied atomically, and only if the partition's stored offset is still
    ``expected_offset`` (None: nothing stored yet). That compare-and-set fences off a
    consumer that lost the partition without noticing.
    """

    state: str
    expected_offset: int | None
    offset: int
    meta: str
    rows: Sequence[tuple[str, OnlineRow, int]]  # (view, row, ttl in µs)
    put: Mapping[str, str]
    delete: Sequence[str]


@dataclass(frozen=True)
class PartitionState:
    """What a partition's consumer stored: next offset, metadata and state fields."""

    offset: int | None
    meta: str | None
    fields: dict[str, str]


class OnlineStore(ABC):
    """Latest values per (view, entity), written in atomic batches with a checkpoint."""

    kind: ClassVar[str]

    @abstractmethod
    def write(
        self,
        view: str,
        rows: Sequence[OnlineRow],
        *,
        ttl_us: int,
        checkpoint: tuple[str, str] | None = None,
    ) -> int:
        """Apply ``rows`` (skipping any older than what is stored) and the checkpoint, atomically.

        Returns:
            How many rows were applied.
        """

    @abstractmethod
    def check(self) -> None:
        """Make sure the store answers, before long work that ends by writing to it.

        Raises:
            StoreError: it does not (exit status 3 on the command line).
        """

    @abstractmethod
    def read(self, view: str, entities: Sequence[Sequence[Any]]) -> list[StoredValue | None]:
        """The stored values of each entity, None where missing or expired."""

    def read_many(
        self, requests: Sequence[tuple[str, Sequence[Sequence[Any]]]]
    ) -> list[list[StoredValue | None]]:
        """Several views' reads; stores override it to do them in one round trip."""
        return [self.read(view, entities) for view, entities in requests]

    @abstractmethod
    def commit_partition(self, commit: PartitionCommit) -> int:
        """Apply a stream batch atomically (see :class:`PartitionCommit`).

        Returns:
            How many rows were applied.

        Raises:
            StaleCommitError: the stored offset is not ``commit.expected_offset``.
        """

    @abstractmethod
    def load_partition(self, state: str) -> PartitionState:
        """Everything a stream consumer stored for a partition."""

    @abstractmethod
    def get_checkpoint(self, name: str) -> str | None:
        """The last checkpoint written under ``name``."""

    @abstractmethod
    def count(self, view: str) -> int:
        """How many live (unexpired) entities the view has."""

    @abstractmethod
    def clear(self, view: str) -> None:
        """Delete every value of the view."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
