"""End-to-end scenarios that run in processes of their own, beside the rest of the suite.

The multi-host lab and the demo's two runs share nothing with the session's services:
each starts its own clusters, on hosts or ports of its own. They spend much of their
time waiting (for clusters to form, for timeouts after a host is cut off, for
rate-limited producers), and in the foreground they were a quarter of the suite's time.
The conftest starts each one as soon as collection has selected a test that needs it,
and orders its module last; the module's fixture then waits for the outcome
(:func:`outcome`). Whatever a scenario's process leaves, its tests read under its folder.

``python -m tests.background NAME WORK`` runs one scenario in the foreground; it exits
with the scenario's status. On SIGTERM (the session ending early) it stops what it
started before it exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent

# --- the demo, twice, on the secure profile ----------------------------------------------

CANARY = "canary-7f3a9c"
# Ports of their own: the session's plaintext services run beside the demo's.
SECURE_SERVICES = """\
host: 127.0.0.1
secure: true
kafka: {port: 29292, controller_port: 29293}
redis: {port: 26579}
"""


def secure_env(base: Path) -> dict[str, str]:
    """The secure profile's services in ``base``, with canary passwords seeded."""
    conf = base / "services.yaml"
    conf.write_text(SECURE_SERVICES)
    credentials = base / "state" / "credentials"
    credentials.mkdir(parents=True, mode=0o700, exist_ok=True)
    for name in ("kafka-admin", "kafka-tierflow", "redis-tierflow", "spark"):
        (credentials / f"{name}.password").write_text(f"{CANARY}-{name}")
        (credentials / f"{name}.password").chmod(0o600)
    return {
        "TIERFLOW_SERVICES_CONF": str(conf),
        "TIERFLOW_STATE_DIR": str(base / "state"),
        # A secret in the environment that nothing at scale 1 needs: still never printed.
        "TIERFLOW_SPARK_AUTH_SECRET": f"{CANARY}-environment",
    }


def demo(work: Path) -> int:
    """``python -m tierflow.demo`` twice on one data folder: everything, then the reuse.

    Writes ``outcome.json``: each run's exit status, output and report, and the first
    run's HTML report (the second run replaces ``latest``).
    """
    data, logs = work / "data", work / "logs"
    env = dict(os.environ, TIERFLOW_LOGS_DIR=str(logs)) | secure_env(work)
    runs: list[dict[str, Any]] = []
    html = ""
    try:
        for _ in range(2):
            done = _run_child(
                [sys.executable, "-m", "tierflow.demo", "--data-dir", str(data),
                 "--online-store", "redis"], env=env, timeout=1200,
            )  # fmt: skip
            latest = logs / "demo" / "latest"
            report = json.loads((latest / "report.json").read_text())
            html = html or (latest / "report.html").read_text()
            runs.append({"returncode": done.returncode, "stdout": done.stdout,
                         "stderr": done.stderr, "report": report})  # fmt: skip
    finally:
        # A demo stopped half-way leaves its services: stop them by their records.
        subprocess.run([str(Path(sys.executable).parent / "tierflow"), "services", "down"],
                       env=env, cwd=PROJECT, capture_output=True, timeout=120, check=False)  # fmt: skip
    (work / "outcome.json").write_text(json.dumps({"runs": runs, "html": html}))
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


def _run_child(argv: list[str], *, env: dict[str, str], timeout: float) -> Any:
    """``subprocess.run`` that sends the child SIGTERM (not SIGKILL) when this one is stopped."""
    with subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as child:  # fmt: skip
        try:
            out, err = child.communicate(timeout=timeout)
        except BaseException:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
        return subprocess.CompletedProcess(argv, child.returncode, out, err)


def multihost(work: Path) -> int:
    """The network-namespace lab (:mod:`tests.multihost.run`); needs root."""
    from tests.multihost.run import run

    return run(work)


# --- running them beside the suite ---------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A scenario, the test module it serves and the fixture there that waits for it."""

    name: str
    module: str
    fixture: str
    main: Callable[[Path], int]


SCENARIOS = (
    Scenario("multihost", "test_multihost.py", "outcome", multihost),
    Scenario("demo", "test_demo.py", "runs", demo),
)
STARTED = pytest.StashKey[dict[str, tuple[Path, subprocess.Popen[bytes]]]]()


def schedule(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the scenarios the selected tests need, and move their modules to the end."""
    config.stash[STARTED] = {}
    modules = {s.module for s in SCENARIOS}
    items[:] = [i for i in items if i.path.name not in modules] + [
        i for s in SCENARIOS for i in items if i.path.name == s.module
    ]
    if config.option.collectonly:
        return
    for scenario in SCENARIOS:
        if any(i.path.name == scenario.module and scenario.fixture in getattr(i, "fixturenames", ())
               for i in items):  # fmt: skip
            _start(config, scenario)


def _start(config: pytest.Config, scenario: Scenario) -> tuple[Path, subprocess.Popen[bytes]]:
    work = config._tmp_path_factory.mktemp(scenario.name)  # type: ignore[attr-defined]
    with (work / "background.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.background", scenario.name, str(work)],
            cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    config.stash[STARTED][scenario.name] = (work, proc)
    return work, proc


def outcome(config: pytest.Config, name: str, timeout: float = 1500) -> tuple[Path, int]:
    """Wait for scenario ``name`` (started now if it was not); its folder and exit status."""
    started = config.stash.setdefault(STARTED, {})
    scenario = next(s for s in SCENARIOS if s.name == name)
    work, proc = started.get(name) or _start(config, scenario)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise
    return work, rc


def stop_all(config: pytest.Config) -> None:
    """Stop scenarios still running when the session ends (they clean up after themselves)."""
    for _, proc in config.stash.get(STARTED, {}).values():
        if proc.poll() is None:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes], grace: float = 120) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through the scenarios' ``finally`` blocks, which stop by PID
    # what they started; the default action would leave it all running.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    chosen = next(s for s in SCENARIOS if s.name == sys.argv[1])
    began = time.monotonic()
    status = chosen.main(Path(sys.argv[2]))
    print(f"[background] {chosen.name}: exit {status} in {time.monotonic() - began:.0f} s")
    sys.exit(status)
