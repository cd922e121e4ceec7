"""Waiting out a Kafka broker failover: which errors are asked again, and for how long."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError, UnknownBrokerIdError

from tierflow.stream.connection import through_failover


def failing(*errors: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "answered"

    return calls, call


def test_failover_errors_are_asked_again_until_a_broker_answers() -> None:
    calls, call = failing(UnknownBrokerIdError(), KafkaTimeoutError("no leader"))
    assert through_failover(call, "p0", pause_s=0) == "answered"
    assert len(calls) == 3


def test_other_errors_are_raised_at_once() -> None:
    calls, call = failing(TopicAuthorizationFailedError())
    with pytest.raises(TopicAuthorizationFailedError):
        through_failover(call, "p0", pause_s=0)
    assert len(calls) == 1


def test_failover_errors_are_raised_once_patience_runs_out() -> None:
    calls, call = failing(*[KafkaTimeoutError("no leader")] * 5)
    with pytest.raises(KafkaTimeoutError):
        through_failover(call, "p0", patience_s=0.05, pause_s=0.03)
    assert 2 <= len(calls) < 5
