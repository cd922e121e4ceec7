"""Progress of long work: a line redrawn in place on a terminal, sparse lines in a log.

Ingest, materialization, replay and training take minutes at the sizes tierflow is
for. A person at a terminal wants to see them move; a log (a scheduler's, CI's, a file)
wants a few lines, not thousands of redraws. :class:`Progress` decides once, from the
stream and ``TIERFLOW_PROGRESS``:

- ``auto`` (the default): redrawn on a terminal, otherwise a line at most every
  30 seconds;
- ``lines``: every step as its own line (for a script that follows the work);
- ``off``: only what :meth:`Progress.note` says and the last line.

Notes (``resuming at bucket 6/12``) and the final line are always written: they are
what a log is for.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TextIO

Mode = Literal["auto", "lines", "off"]

#: In a log (``auto`` off a terminal): at most one line per this many seconds.
LOG_EVERY_S = 30.0
#: On a terminal: at most this many redraws per second.
REDRAW_EVERY_S = 0.1
#: Streams on which :func:`ticking` has a line drawn, and the lock of their writes.
_TICKING: set[int] = set()
_DRAWN = threading.Lock()


def _mode() -> Mode:
    from tierflow.settings import env_settings

    return env_settings().progress


class Progress:
    """One piece of long work counted in ``unit`` (rows, events, buckets, steps).

    Args:
        what: What is being done, the start of every line ("route_history: loading").
        total: How many units there will be, if known (for the share and the time left).
        unit: The unit's name, plural.
        stream: Where lines go (standard error by default).
        mode: ``auto``, ``lines`` or ``off``; ``TIERFLOW_PROGRESS`` when not given.
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "",
        *,
        stream: TextIO | None = None,
        mode: Mode | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.mode: Mode = mode or _mode()
        self._clock = clock or time.monotonic
        self.tty = self.mode == "auto" and _isatty(self.stream)
        self.began = self._clock()
        self._last_line = self.began if self.mode == "auto" and not self.tty else -1e9
        self._drawn = False  # a redrawn line is on the terminal
        self.done = 0
        # The rate counts from here: a resumed run's earlier units took no time now.
        self._base, self._base_at = 0, self.began

    # --- what the work says ---------------------------------------------------------------

    def update(self, done: int, detail: str = "") -> None:
        """``done`` units so far (absolute); ``detail`` is added to the line."""
        self.done = done
        now = self._clock()
        if self.mode == "off":
            return
        if self.mode == "lines":
            self._write(self.line(detail, now) + "\n")
        elif self.tty:
            if now - self._last_line >= REDRAW_EVERY_S or self._finished():
                self._write("\r\x1b[2K" + self.line(detail, now))
                self._drawn = True
                self._last_line = now
        elif now - self._last_line >= LOG_EVERY_S:
            self._write(self.line(detail, now) + "\n")
            self._last_line = now

    def rebase(self, done: int) -> None:
        """``done`` units were done before now (a resumed run): the rate counts from here."""
        self.done, self._base, self._base_at = done, done, self._clock()

    def advance(self, units: int = 1, detail: str = "") -> None:
        """``units`` more done."""
        self.update(self.done + units, detail)

    def note(self, text: str) -> None:
        """A line that is always written (a resume point, a decision)."""
        self._clear()
        self._write(text + "\n")

    def close(self, text: str | None = None) -> None:
        """Clear a redrawn line; then write ``text``, if given, as the last line.

        (Commands print their own result: a last progress line would repeat it.)
        """
        self._clear()
        if text is not None:
            self._write(text + "\n")

    def summary(self) -> str:
        """The count, the time and the rate, as a last line would say them."""
        return self.line("", self._clock(), final=True)

    # --- the line -------------------------------------------------------------------------

    def line(self, detail: str, now: float, *, final: bool = False) -> str:
        """``what: done/total unit (share), rate, time left; detail``."""
        elapsed = max(now - self.began, 1e-9)
        measured = max(now - self._base_at, 1e-9)
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total else "")
        parts = [f"{count} {self.unit}".rstrip()]
        if self.total and not final:
            parts.append(f"{100 * self.done / self.total:.0f}%")
        rate = (self.done - self._base) / measured
        if rate > 0 and measured >= 1:
            parts.append(f"{_number(rate)} {self.unit}/s".replace(" /s", "/s"))
        if final or self._finished():
            parts.append(f"in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"{_duration((self.total - self.done) / rate)} left")
        text = f"{self.what}: {', '.join(parts)}"
        return f"{text}; {detail}" if detail else text

    def _finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r\x1b[2K")
            self._drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@contextmanager
def ticking(what: str, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, a terminal shows ``what`` and the seconds it has taken.

    For work that cannot count its units (an engine's write, a Spark stage): redrawn
    twice a second on a terminal in ``auto`` mode, nothing otherwise (the caller logs
    the start and the end).
    """
    out = stream if stream is not None else sys.stderr
    if _mode() != "auto" or not _isatty(out):
        yield
        return
    done = threading.Event()
    began = time.monotonic()

    def draw() -> None:
        while not done.wait(0.5):
            with _DRAWN:
                out.write(f"\r\x1b[2K{what} ({_duration(time.monotonic() - began)})")
                out.flush()
                _TICKING.add(id(out))

    thread = threading.Thread(target=draw, name="tierflow-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        clear_line(out)


def clear_line(stream: TextIO | None = None) -> None:
    """Clear what :func:`ticking` drew on ``stream``, before a line is logged there."""
    out = stream if stream is not None else sys.stderr
    with _DRAWN:
        if id(out) in _TICKING:
            out.write("\r\x1b[2K")
            out.flush()
            _TICKING.discard(id(out))
