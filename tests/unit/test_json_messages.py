"""Message decoding: the one-pass Arrow reader gives exactly what message-by-message gives."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tierflow.io.textdecode import (
    _json_messages_fast,
    decode_json_messages,
    json_messages_one_by_one,
)

TYPES = {
    "s": "string",
    "i": "int64",
    "j": "int32",
    "f": "float64",
    "g": "float32",
    "b": "boolean",
    "t": "timestamp",
    "d": "date",
}

NATURAL: dict[str, list[Any]] = {
    "s": ["UA", "", "  ", " a ", "é", "\u0000x", "line\\u2028", '"q"', "\\\\", None],
    "i": [0, -5, 2**31, 2**62, 10**18 - 1, 10**18, 2**63 - 1, -(2**63), None],
    "j": [0, 7, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, None],
    "f": [0.0, -0.0, 1.5, 1e20, 1e-7, 5e-324, 1.7976931348623157e308, 12, 2**60 + 1, None],
    "g": [1.5, 3.5e38, 3.5e39, 1e-46, 7, None],
    "b": [True, False, None],
    "t": ["2013-01-01T05:00:00Z", "2013-01-01 05:00:00", "2013-01-01T05:00:00+00:00",
          "2013-01-01T05:00:00.250000+02:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
          "2013-02-29T00:00:00Z", "yesterday", "", None],
    "d": ["2013-01-01", "2013-02-29", "13-01-01", " ", None],
}  # fmt: skip

ODD: dict[str, list[Any]] = {
    "s": [12, 1.5, True, {"a": 1}, [1]],
    "i": [1.0, 1e2, "12", "x", True, 10**30, float("nan")],
    "j": ["7", 7.0],
    "f": ["1.5", "nan", float("inf"), float("-inf"), float("nan"), True, [1.0]],
    "g": ["x"],
    "b": [1, 0, "true", "yes"],
    "t": [1_357_016_400, 1e30, True],
    "d": [20130101],
}


def natural(rng: random.Random) -> bytes:
    row = {c: rng.choice(v) for c, v in NATURAL.items() if rng.random() < 0.9}
    row["extra"] = rng.choice([1, "x", {"nested": [1, {"deep": None}]}, None])
    text = json.dumps(row, ensure_ascii=rng.random() < 0.5)
    return text.encode()


def odd(rng: random.Random) -> bytes | None:
    kind = rng.randrange(12)
    if kind < 7:
        row: dict[str, Any] = json.loads(natural(rng))
        column = rng.choice(list(ODD))
        row[column] = rng.choice(ODD[column])
        return json.dumps(row).encode()
    return rng.choice(
        [
            None,
            b"",
            b"[1, 2]",
            b"42",
            b'{"s": "a"} {"s": "b"}',
            b'{"s": "a",\n "i": 1}',
            b'{"s": "a", "s": "b"}',
            b'{"s": "\xff"}',
            b'{"s": "\\ud800"}',
            b'  {"s": "lead"}',
            b'{"s": "trail"}  ',
            b'{"s": "a"}garbage',
            b"{" * 3000,
            b'{"i": 1}\r',
        ]
    )


def test_a_batch_of_natural_payloads_takes_the_one_pass_reader() -> None:
    rng = random.Random(1)
    payloads = [natural(rng) for _ in range(500)]
    fast = _json_messages_fast(payloads, TYPES, 4096)
    assert fast is not None
    assert fast.equals(json_messages_one_by_one(payloads, TYPES, max_bytes=4096))


@pytest.mark.parametrize("seed", range(40))
def test_both_paths_decode_every_batch_alike(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([1, 2, 5, 50, 300])
    payloads = [
        odd(rng) if rng.random() < rng.choice([0.0, 0.01, 0.2]) else natural(rng)
        for _ in range(size)
    ]
    slow = json_messages_one_by_one(payloads, TYPES, max_bytes=2048)
    fast = _json_messages_fast(payloads, TYPES, 2048)
    if fast is not None:
        assert fast.equals(slow), (fast.to_pylist()[:3], slow.to_pylist()[:3])
    assert decode_json_messages(payloads, TYPES, max_bytes=2048).equals(slow)


@pytest.mark.parametrize("column", list(ODD))
def test_each_odd_value_decodes_alike(column: str) -> None:
    rng = random.Random(7)
    for value in ODD[column]:
        row: dict[str, Any] = json.loads(natural(rng))
        row[column] = value
        payloads = [natural(rng), json.dumps(row).encode()]
        slow = json_messages_one_by_one(payloads, TYPES, max_bytes=4096)
        assert decode_json_messages(payloads, TYPES, max_bytes=4096).equals(slow), value


def test_an_escaped_lone_surrogate_is_a_parse_error_not_a_crash() -> None:
    payloads = [b'{"s": "\\ud800"}', b'{"s": "\\ud83d\\ude00"}']
    batch = decode_json_messages(payloads, TYPES, max_bytes=4096)
    assert batch.column("_tf_error").to_pylist()[0] == (
        "parse: invalid JSON (an escaped lone surrogate is no character)"
    )
    assert batch.column("s").to_pylist() == [None, "\U0001f600"]
