"""Start, track and stop service processes by PID, without touching anyone else's.

Each service process is started as the leader of a new session, so that everything it
spawns (Ray's raylet and dashboard, a Spark worker's executors) carries its session id.
Stopping signals the recorded leaders, then any process still in those sessions, each by
PID. A record also keeps the process start time, so a PID reused by an unrelated process
is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` that tierflow uses."""

    state: str
    session: int
    start_ticks: int


def read_stat(pid: int) -> ProcStat | None:
    """Return the stat of ``pid``, or None when there is no such process."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(state=fields[0], session=int(fields[3]), start_ticks=int(fields[19]))


@dataclass(frozen=True)
class ProcessRecord:
    """A process tierflow started: enough to find it again and to know it is the same one."""

    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log: str

    def is_alive(self) -> bool:
        """True while this very process (same PID and start time) runs and is no zombie."""
        _reap(self.pid)
        stat = read_stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks and stat.state != "Z"

    def session_members(self) -> list[int]:
        """PIDs of live processes in the session this process leads (itself included)."""
        members = []
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = read_stat(pid)
            if stat is None or stat.state == "Z" or stat.session != self.pid:
                continue
            if pid == self.pid and stat.start_ticks != self.start_ticks:
                continue
            members.append(pid)
        return members


def _reap(pid: int) -> None:
    # Processes started by this interpreter become zombies until waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def launch(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start ``argv`` as a new session leader with output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    stat = read_stat(proc.pid)
    start_ticks = stat.start_ticks if stat else 0
    return ProcessRecord(
        name=name, pid=proc.pid, start_ticks=start_ticks, argv=tuple(argv), log=str(log)
    )


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _live_pids(records: Sequence[ProcessRecord]) -> set[int]:
    pids = {r.pid for r in records if r.is_alive()}
    for record in records:
        pids.update(record.session_members())
    return pids


def stop(records: Sequence[ProcessRecord], *, grace: float = 30.0) -> list[int]:
    """Stop the recorded processes and whatever still runs in their sessions.

    Leaders get SIGTERM first (Ray's ``ray start --block`` drains its node on it), then
    the rest of each session; after ``grace`` seconds whatever is left gets SIGKILL.

    Returns:
        The PIDs that had to be killed with SIGKILL.
    """
    # Later processes depend on earlier ones (a worker on its master): stop them first.
    for record in reversed(records):
        if record.is_alive():
            _signal([record.pid], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(r.is_alive() for r in records):
        time.sleep(0.1)
    _signal(_live_pids(records), signal.SIGTERM)
    while time.monotonic() < deadline and _live_pids(records):
        time.sleep(0.1)
    leftovers = sorted(_live_pids(records))
    _signal(leftovers, signal.SIGKILL)
    final_deadline = time.monotonic() + 10
    while time.monotonic() < final_deadline and _live_pids(records):
        time.sleep(0.05)
    return leftovers


def save_records(path: Path, records: Sequence[ProcessRecord]) -> None:
    """Write the records atomically (a crash mid-write leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in records], indent=2))
    tmp.replace(path)


def load_records(path: Path) -> list[ProcessRecord]:
    """Read records written by :func:`save_records`; a missing file means none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [
        ProcessRecord(
            name=d["name"],
            pid=int(d["pid"]),
            start_ticks=int(d["start_ticks"]),
            argv=tuple(d["argv"]),
            log=d["log"],
        )
        for d in data
    ]


def tail(path: Path | str, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])
