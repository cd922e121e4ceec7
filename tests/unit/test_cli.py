"""The command line's contract with scripts: its version and its exit statuses."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from tierflow.cli import main
from tierflow.errors import ExitCode
from tierflow.jobs.contracts import ContractError
from tierflow.jobs.runner import BadRowThresholdError
from tierflow.stores.base import StoreError
from tierflow.stream.runtime import KafkaUnreachableError, StreamError


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"tierflow {version('tierflow')}"


def test_help_lists_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit statuses:" in out and "3  a service unreachable" in out


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run"])  # no job: argparse's own usage error
    assert done.value.code == ExitCode.USAGE == 2
    assert main(["plan", "no/such/job.yaml"]) == ExitCode.USAGE
    assert "no/such/job.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ContractError("x"), 1),
        (BadRowThresholdError("x"), 1),
        (StreamError("x"), 2),
        (KafkaUnreachableError("x"), 3),
        (StoreError("x"), 3),
    ],
)
def test_each_kind_of_error_has_its_status(error: Exception, status: int) -> None:
    assert error.exit_code == status  # type: ignore[attr-defined]


def test_help_groups_every_command_with_an_example_that_parses() -> None:
    import shlex

    from tierflow.cli import _PASSTHROUGH, GROUPS, _parser

    parser = _parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    grouped = {name for group in GROUPS.values() for name in group}
    assert grouped == set(commands.choices)  # type: ignore[arg-type]
    text = parser.format_help()
    for group in GROUPS.values():
        for name, example in group.items():
            assert f"e.g. {example}" in text
            if name not in _PASSTHROUGH:  # spark-submit's arguments are its own
                parser.parse_args(shlex.split(example.replace(" [--resume RUN]", ""))[1:])


@pytest.mark.parametrize(("argv", "option"), [(["run"], "--engine"), (["services", "up"], "names")])
def test_a_command_s_help_is_its_own(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith(f"usage: tierflow {' '.join(argv)} ") and option in out
    assert "exit statuses:" not in out  # not the top-level listing


def test_an_online_store_that_does_not_answer_exits_3_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TIERFLOW_REDIS_URL", f"redis://:canary-password@127.0.0.1:{port}/0")
    assert main(["serve", "--store", "redis", "--port", "0"]) == ExitCode.SERVICE == 3
    err = capsys.readouterr().err
    assert f"the Redis online store at 127.0.0.1:{port}/0 does not answer" in err
    assert "canary-password" not in err
