from __future__ import annotations

import pytest
import redis

pytestmark = [pytest.mark.redis]


def test_round_trip(redis_url, unique_name):
    client = redis.Redis.from_url(redis_url)
    key = unique_name("test")
    assert client.set(f"{key}:plain", "value") is True
    assert client.get(f"{key}:plain") == b"value"

    with client.pipeline(transaction=True) as pipe:
        pipe.hset(f"{key}:hash", mapping={"a": 1, "b": "two"})
        pipe.expire(f"{key}:hash", 60)
        pipe.execute()
    assert client.hgetall(f"{key}:hash") == {b"a": b"1", b"b": b"two"}
    assert 0 < client.ttl(f"{key}:hash") <= 60
    assert client.delete(f"{key}:plain", f"{key}:hash") == 2
    info = client.info("server")
    assert info["tcp_port"] == int(redis_url.rsplit(":", 1)[1].split("/")[0])
    client.close()
