"""The production online store: Redis, one hash per (view, entity), written by a Lua script.

Key ``tf:<view>:<entity>`` holds ``we`` (window end, µs) and ``v`` (the values as JSON)
and expires ``ttl`` after the write. A batch is applied by one script call, which Redis
runs atomically: every row whose window is not older than the stored one, and the
checkpoint, land together or not at all. Reads of many entities and views are one
pipelined round trip. (All keys of a call must live on one node: a single Redis or a
cluster with hash-tagged keys.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tierflow.stores.base import (
    OnlineRow,
    OnlineStore,
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


def _key(view: str, entity: Sequence[Any]) -> str:
    return f"tf:{view}:{entity_key(entity)}"


class RedisOnlineStore(OnlineStore):
    """An online store in Redis (redis-py)."""

    kind = "redis"

    def __init__(self, url: str, *, password: str | None = None) -> None:
        import redis

        self._redis = redis
        self.client = redis.Redis.from_url(url, password=password, socket_timeout=10)
        self._script = self.client.register_script(_WRITE)

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

    def read(self, view: str, entities: Sequence[Sequence[Any]]) -> list[StoredValue | None]:
        """HMGET of every entity's key, pipelined."""
        return self.read_many([(view, entities)])[0]

    def read_many(
        self, requests: Sequence[tuple[str, Sequence[Sequence[Any]]]]
    ) -> list[list[StoredValue | None]]:
        """All views and entities in one pipelined round trip."""
        pipe = self.client.pipeline(transaction=False)
        for view, entities in requests:
            for entity in entities:
                pipe.hmget(_key(view, entity), "we", "v")
        try:
            answers = iter(pipe.execute())
        except self._redis.RedisError as exc:
            raise StoreError(f"redis read failed: {exc}") from exc
        out: list[list[StoredValue | None]] = []
        for _view, entities in requests:
            values: list[StoredValue | None] = []
            for _ in entities:
                window_end, payload = next(answers)
                values.append(
                    None if payload is None else StoredValue(json.loads(payload), int(window_end))
                )
            out.append(values)
        return out

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
