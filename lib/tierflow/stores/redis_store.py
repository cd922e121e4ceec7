"""The production online store: Redis, one hash per (view, entity), written by a Lua script.

Key ``tf:<view>:<entity>`` holds ``we`` (window end, µs) and ``v`` (the values as JSON)
and expires ``ttl`` after the write. A batch is applied by one script call, which Redis
runs atomically: every row whose window is not older than the stored one, and the
checkpoint, land together or not at all. Reads of many entities and views are one
script call too: one command whose reply lists every key's two fields, rather than a
pipeline of one HMGET per key, which costs redis-py a command to pack and a reply to
parse per key (at 100 keys, most of a read's time). (All keys of a call must live on
one node: a single Redis or a cluster with hash-tagged keys.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from pydantic import SecretStr

from tierflow.stores.base import (
    OnlineRow,
    OnlineStore,
    PartitionCommit,
    PartitionState,
    StaleCommitError,
    StoredValue,
    StoreError,
    encode_values,
    entity_key,
)

_WRITE = """
local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local applied = 0
for i = 1, n do
  local key = KEYS[i]
  local we = tonumber(ARGV[3 + 2 * i - 1])
  local current = redis.call('HGET', key, 'we')
  if (not current) or tonumber(current) <= we then
    redis.call('HSET', key, 'we', ARGV[3 + 2 * i - 1], 'v', ARGV[3 + 2 * i])
    redis.call('PEXPIRE', key, ttl)
    applied = applied + 1
  end
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[n + 1], ARGV[3])
end
return applied
"""

# A stream partition's commit: compare-and-set on the stored offset, then the rows (same
# window guard as above, each with its view's TTL), the state fields and the offset.
_COMMIT = """
local stored = redis.call('HGET', KEYS[1], '__offset__')
if (stored or '') ~= ARGV[1] then
  return -1
end
local n = tonumber(ARGV[4])
local at = 5
local applied = 0
for i = 1, n do
  local key = KEYS[1 + i]
  local we = tonumber(ARGV[at])
  local current = redis.call('HGET', key, 'we')
  if (not current) or tonumber(current) <= we then
    redis.call('HSET', key, 'we', ARGV[at], 'v', ARGV[at + 1])
    redis.call('PEXPIRE', key, tonumber(ARGV[at + 2]))
    applied = applied + 1
  end
  at = at + 3
end
local puts = tonumber(ARGV[at])
at = at + 1
for i = 1, puts do
  redis.call('HSET', KEYS[1], ARGV[at], ARGV[at + 1])
  at = at + 2
end
local dels = tonumber(ARGV[at])
at = at + 1
for i = 1, dels do
  redis.call('HDEL', KEYS[1], ARGV[at])
  at = at + 1
end
redis.call('HSET', KEYS[1], '__offset__', ARGV[2], '__meta__', ARGV[3])
return applied
"""
_RESERVED = ("__offset__", "__meta__")

# Every key's window end and values, flat: two entries per key, false where it is absent.
# Declared read-only, so it also runs on a replica (Redis 7's script flags).
_READ = """#!lua flags=no-writes
local out = {}
for i = 1, #KEYS do
  local fields = redis.call('HMGET', KEYS[i], 'we', 'v')
  out[2 * i - 1] = fields[1]
  out[2 * i] = fields[2]
end
return out
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(view: str, entity: Sequence[Any]) -> str:
    return f"tf:{view}:{entity_key(entity)}"


class RedisOnlineStore(OnlineStore):
    """An online store in Redis (redis-py)."""

    kind = "redis"

    def __init__(self, url: str, *, password: SecretStr | str | None = None) -> None:
        import redis

        self._redis = redis
        if isinstance(password, SecretStr):
            password = password.get_secret_value()
        self.client = redis.Redis.from_url(url, password=password, socket_timeout=10)
        self._script = self.client.register_script(_WRITE)
        self._commit = self.client.register_script(_COMMIT)
        self._read = self.client.register_script(_READ)

    def write(
        self,
        view: str,
        rows: Sequence[OnlineRow],
        *,
        ttl_us: int,
        checkpoint: tuple[str, str] | None = None,
    ) -> int:
        """One script call: every row and the checkpoint, atomically."""
        keys = [_key(view, r.entity) for r in rows]
        args: list[Any] = [len(rows), max(1, ttl_us // 1000), checkpoint[1] if checkpoint else ""]
        for r in rows:
            args += [r.window_end_us, encode_values(r.values)]
        if checkpoint is not None:
            keys.append(f"tf:ckpt:{checkpoint[0]}")
        try:
            return int(self._script(keys=keys, args=args))
        except self._redis.RedisError as exc:
            raise StoreError(f"redis write of {len(rows)} rows for {view} failed: {exc}") from exc

    def check(self) -> None:
        """PING (the password, if any, is never in the message)."""
        try:
            self.client.ping()
        except self._redis.RedisError as exc:
            where = self.client.connection_pool.connection_kwargs
            address = f"{where.get('host', '?')}:{where.get('port', '?')}/{where.get('db', 0)}"
            raise StoreError(f"the Redis online store at {address} does not answer: {exc}") from exc

    def read(self, view: str, entities: Sequence[Sequence[Any]]) -> list[StoredValue | None]:
        """Every entity's window end and values, in one script call."""
        return self.read_many([(view, entities)])[0]

    def read_many(
        self, requests: Sequence[tuple[str, Sequence[Sequence[Any]]]]
    ) -> list[list[StoredValue | None]]:
        """All views and entities in one script call (one round trip)."""
        keys = [_key(view, entity) for view, entities in requests for entity in entities]
        if not keys:
            return [[] for _ in requests]
        try:
            if len(keys) == 1:  # a plain HMGET, cheaper than running the script
                answer = self.client.hmget(keys[0], "we", "v")
            else:
                answer = self._read(keys=keys)
        except self._redis.RedisError as exc:
            raise StoreError(f"redis read of {len(keys)} keys failed: {exc}") from exc
        flat = cast("list[Any]", answer)  # bytes; None where a key or field is absent
        out: list[list[StoredValue | None]] = []
        at = 0
        for _view, entities in requests:
            values: list[StoredValue | None] = []
            for _ in entities:
                window_end, payload = flat[at], flat[at + 1]
                values.append(
                    None if payload is None else StoredValue(json.loads(payload), int(window_end))
                )
                at += 2
            out.append(values)
        return out

    def commit_partition(self, commit: PartitionCommit) -> int:
        """One script call: offset check, rows, state and offset, atomically."""
        keys = [f"tf:st:{commit.state}"]
        expected = "" if commit.expected_offset is None else str(commit.expected_offset)
        args: list[Any] = [expected, commit.offset, commit.meta, len(commit.rows)]
        for view, row, ttl_us in commit.rows:
            keys.append(_key(view, row.entity))
            args += [row.window_end_us, encode_values(row.values), max(1, ttl_us // 1000)]
        args.append(len(commit.put))
        for name, value in commit.put.items():
            args += [name, value]
        args.append(len(commit.delete))
        args += list(commit.delete)
        try:
            applied = int(self._commit(keys=keys, args=args))
        except self._redis.RedisError as exc:
            raise StoreError(f"redis commit of {commit.state} failed: {exc}") from exc
        if applied < 0:
            raise StaleCommitError(
                f"{commit.state}: stored offset moved past {commit.expected_offset}"
            )
        return applied

    def load_partition(self, state: str) -> PartitionState:
        """HGETALL of the partition's state hash."""
        try:
            raw = self.client.hgetall(f"tf:st:{state}")
        except self._redis.RedisError as exc:
            raise StoreError(f"redis read of {state} failed: {exc}") from exc
        fields = {_text(k): _text(v) for k, v in raw.items()}
        offset = fields.pop("__offset__", None)
        meta = fields.pop("__meta__", None)
        return PartitionState(None if offset is None else int(offset), meta, fields)

    def get_checkpoint(self, name: str) -> str | None:
        """The checkpoint's value, or None."""
        value = self.client.get(f"tf:ckpt:{name}")
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def count(self, view: str) -> int:
        """Live entities of the view (a SCAN over its keys)."""
        return sum(1 for _ in self.client.scan_iter(match=f"tf:{view}:*", count=1000))

    def clear(self, view: str) -> None:
        """Delete the view's keys."""
        batch = []
        for key in self.client.scan_iter(match=f"tf:{view}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.client.delete(*batch)
                batch = []
        if batch:
            self.client.delete(*batch)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
