"""A training run's curves as a PNG, drawn with matplotlib.

The chart: the training loss of every step as a line, the validation loss at each
epoch's end as squares, epochs marked on the step axis, with axes, labels, a legend and
the run's name in the title. matplotlib is imported when a chart is drawn, never by
``import tierflow``, and on its non-interactive Agg canvas (no display needed);
:func:`warm` imports it in the background while the workers train.
"""

from __future__ import annotations

import io
import math
import threading
from typing import Any


def warm() -> None:
    """Import matplotlib in a background thread (the driver only waits on its workers)."""

    def load() -> None:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401

    threading.Thread(target=load, name="tierflow-import-matplotlib", daemon=True).start()


def curves_png(history: list[dict[str, Any]], title: str = "", *, dpi: int = 100) -> bytes:
    """The loss curves of a run's history (see the module doc), 800 x 400 at ``dpi`` 100."""
    from matplotlib.figure import Figure

    train = [(h["step"], h["loss"]) for h in history if _finite(h.get("loss"))]
    valid = [(h["step"], h["valid_loss"]) for h in history if _finite(h.get("valid_loss"))]
    figure = Figure(figsize=(8, 4), dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), color="tab:blue", linewidth=1, label="training loss")
    if valid:
        axes.plot(*zip(*valid, strict=True), "s", color="tab:red", markersize=6,
                  label="validation loss (epoch end)")  # fmt: skip
        for step, _ in valid[:-1]:
            axes.axvline(step, color="0.85", linewidth=0.8, zorder=0)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(f"{title}: loss per step" if title else "loss per step")
    axes.grid(alpha=0.3)
    if train or valid:
        axes.legend(loc="upper right")
    out = io.BytesIO()
    figure.savefig(out, format="png")  # a Figure of its own: Agg, no pyplot state
    return out.getvalue()


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
