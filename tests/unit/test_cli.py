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
