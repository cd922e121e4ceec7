"""Progress lines: redrawn on a terminal, sparse in a log, every step when asked."""

from __future__ import annotations

import io

import pytest

from tierflow.progress import LOG_EVERY_S, Progress, ticking


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(bar: Progress, clock: Clock, steps: int, every_s: float) -> None:
    for done in range(1, steps + 1):
        clock.now += every_s
        bar.update(done)


def test_lines_mode_writes_every_step_with_its_count_share_and_rate() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress("view: loading", 12, "buckets", stream=out, mode="lines", clock=clock)
    run(bar, clock, 5, every_s=2.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[-1] == "view: loading: 5/12 buckets, 42%, 0.5 buckets/s, 14 s left"


def test_a_log_gets_a_line_at_most_every_half_minute() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress("topic: sent", None, "events", stream=out, mode="auto", clock=clock)
    run(bar, clock, 100, every_s=1.0)  # 100 s of updates, one a second
    lines = out.getvalue().splitlines()
    assert len(lines) == 100 // LOG_EVERY_S == 3
    assert lines[0] == "topic: sent: 30 events, 1.0 events/s"
    bar.note("resuming at bucket 6/12")  # notes always go out
    assert out.getvalue().splitlines()[-1] == "resuming at bucket 6/12"


def test_a_terminal_gets_one_line_redrawn_and_notes_clear_it() -> None:
    clock, out = Clock(), Terminal()
    bar = Progress("x", 1000, "rows", stream=out, mode="auto", clock=clock)
    run(bar, clock, 1000, every_s=0.01)  # 10 s: about 100 redraws, not 1000
    text = out.getvalue()
    assert "\n" not in text
    assert 90 <= text.count("\r\x1b[2K") <= 101
    assert text.endswith("x: 1,000/1,000 rows, 100%, 100 rows/s, in 10.0 s")  # the last is drawn
    bar.note("done")
    assert out.getvalue().endswith("\r\x1b[2Kdone\n")
    bar.close()
    assert out.getvalue().endswith("done\n")  # nothing left to clear


def test_off_writes_only_notes_and_the_last_line() -> None:
    clock, out = Clock(), Terminal()
    bar = Progress("x", 10, "steps", stream=out, mode="off", clock=clock)
    run(bar, clock, 10, every_s=1.0)
    bar.note("a note")
    bar.close("finished")
    assert out.getvalue() == "a note\nfinished\n"


def test_a_resumed_run_counts_its_rate_from_where_it_resumed() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress("x", 12, "buckets", stream=out, mode="lines", clock=clock)
    clock.now += 60  # starting up
    bar.rebase(6)
    clock.now += 3
    bar.update(9)
    assert out.getvalue().strip() == "x: 9/12 buckets, 75%, 1.0 buckets/s, 3.0 s left"


def test_the_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_PROGRESS", "lines")
    assert Progress("x", stream=io.StringIO()).mode == "lines"
    monkeypatch.setenv("TIERFLOW_PROGRESS", "loud")
    from tierflow.errors import ConfigError

    with pytest.raises(ConfigError, match="TIERFLOW_PROGRESS = 'loud'"):
        Progress("x", stream=io.StringIO())


def test_ticking_draws_nothing_off_a_terminal() -> None:
    out = io.StringIO()
    with ticking("writing", out):
        pass
    assert out.getvalue() == ""
