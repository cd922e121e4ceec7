"""Topics as they exist: messages keyed by a JSON list, by the plain entity, or not at all."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from tierflow.config.features import FeatureViewConfig
from tierflow.errors import ConfigError
from tierflow.stream.events import TopicSchema, check_messages, message_key
from tierflow.stream.replay import event_messages


def view(
    key_format: str, entities: tuple[str, ...] = ("carrier",), name: str = "v"
) -> FeatureViewConfig:
    return FeatureViewConfig.model_validate(
        {
            "name": name,
            "entities": list(entities),
            "event_time": "ts",
            "step": "1h",
            "ttl": "1d",
            "source": {
                "format": "delta",
                "path": "t",
                "topic": "t",
                "key_format": key_format,
                "columns": {
                    "carrier": {"type": "string", "nullable": False},
                    "flight": {"type": "int64"},
                    "ts": {"type": "timestamp"},
                },
            },
            "features": [{"name": "n", "agg": "count"}],
        }
    )


def judge(
    key_format: str, keys: list[bytes | None], entities: tuple[str, ...] = ("carrier",)
) -> dict[int, str]:
    schema = TopicSchema.of("t", [view(key_format, entities)])
    value = json.dumps({"carrier": "UA", "flight": 42, "ts": "2013-01-01T05:00:00Z"}).encode()
    stamps = [1_357_016_400_000] * len(keys)  # the events' own time
    checked = check_messages(
        schema, keys, [value] * len(keys), list(range(len(keys))), stamps, max_bytes=4096
    )
    return dict(checked.poison)


def test_json_list_keys_are_the_default() -> None:
    poison = judge("json-list", [b'["UA"]', b"UA", None])
    assert sorted(poison) == [1, 2]
    assert poison[1] == "key: message key b'UA' is not the entity key [\"UA\"] (json-list)"


def test_string_keys_are_the_plain_entity_value() -> None:
    poison = judge("string", [b"UA", b'["UA"]', None, b"AA"])
    assert sorted(poison) == [1, 2, 3]
    assert poison[3] == "key: message key b'AA' is not the entity key UA (string)"
    # An integer entity is keyed by its decimal text.
    assert sorted(judge("string", [b"42", b"042"], entities=("flight",))) == [1]


def test_from_value_ignores_the_key() -> None:
    assert judge("from-value", [b'["UA"]', b"AA", None, b"\xff"]) == {}


def test_a_string_key_needs_a_one_column_entity() -> None:
    with pytest.raises(ValidationError, match="key_format string needs a one-column entity"):
        view("string", ("carrier", "flight"))


def test_views_of_one_topic_agree_on_its_key_format() -> None:
    with pytest.raises(ConfigError, match="different key formats"):
        TopicSchema.of("t", [view("string"), view("json-list", name="w")])


@pytest.mark.parametrize(
    ("key_format", "keys", "expected"),
    [
        ("json-list", ["carrier", "flight"], b'["UA",42]'),
        ("string", ["carrier"], b"UA"),
        ("from-value", ["carrier", "flight"], None),
    ],
)
def test_replay_writes_the_topic_s_key_format(
    key_format: str, keys: list[str], expected: Any
) -> None:
    table = pa.table(
        {"carrier": ["UA"], "flight": [42], "ts": pa.array([0], pa.timestamp("us", "UTC"))}
    )
    ((key, _value, _ts),) = event_messages(table, keys, "ts", key_format)
    assert key == expected == message_key(["UA", 42][: len(keys)], key_format)


@pytest.mark.parametrize("key_format", ["json-list", "string"])
def test_the_vectorised_keys_equal_the_keys_one_by_one(key_format: str) -> None:
    import random

    from tierflow.stream.events import _expected_keys

    rng = random.Random(5)
    texts = ["UA", "", 'a"b', "back\\slash", "tab\there", "nl\n", "é ü", "\x7f", "\x00", "😀"]
    entities = ("carrier",) if key_format == "string" else ("carrier", "flight")
    rows = [(rng.choice(texts), rng.choice([0, -1, 2**40])) for _ in range(300)]
    table = pa.table(
        {
            "carrier": pa.array([r[0] for r in rows], pa.large_string()),
            "flight": pa.array([r[1] for r in rows], pa.int64()),
        }
    )
    schema = TopicSchema.of("t", [view(key_format, entities)])
    got = _expected_keys(table, schema)
    assert got is not None
    assert got.to_pylist() == [message_key(list(r[: len(entities)]), key_format) for r in rows]
