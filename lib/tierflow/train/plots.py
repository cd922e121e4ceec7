"""Training curves as a PNG, drawn without a plotting library (numpy and zlib only).

The chart: training loss per step as a blue line, validation loss at each epoch's end as
red squares, on a white canvas with a light frame; the y range is written into the file's
``tEXt`` chunk (there is no text rendering).
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from typing import Any

import numpy as np

_BLUE = (31, 119, 180)
_RED = (214, 39, 40)
_GREY = (200, 200, 200)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """An RGB uint8 array ``[height, width, 3]`` as PNG bytes."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")))
    chunks += [_chunk(b"IDAT", zlib.compress(raw, 9)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _line(canvas: np.ndarray, a: tuple[int, int], b: tuple[int, int], color: Any) -> None:
    steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
    xs = np.linspace(a[0], b[0], steps + 1).round().astype(int)
    ys = np.linspace(a[1], b[1], steps + 1).round().astype(int)
    canvas[ys, xs] = color


def curves_png(history: list[dict[str, Any]], width: int = 640, height: int = 320) -> bytes:
    """The loss curves of a run's history (see the module doc)."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    pad = 20
    canvas[pad, pad : width - pad] = _GREY
    canvas[height - pad, pad : width - pad] = _GREY
    canvas[pad : height - pad, pad] = _GREY
    canvas[pad : height - pad, width - pad] = _GREY
    train = [(h["step"], h["loss"]) for h in history if math.isfinite(h.get("loss", math.nan))]
    valid = [
        (h["step"], h["valid_loss"])
        for h in history
        if math.isfinite(h.get("valid_loss", math.nan))
    ]
    points = train + valid
    if not points:
        return encode_png(canvas)
    x_max = max(p[0] for p in points) or 1
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    span = (y_max - y_min) or 1.0

    def at(step: float, value: float) -> tuple[int, int]:
        x = pad + (width - 2 * pad - 1) * step / x_max
        y = height - pad - 1 - (height - 2 * pad - 2) * (value - y_min) / span
        return round(x), round(y)

    for first, second in itertools.pairwise(train):
        _line(canvas, at(*first), at(*second), _BLUE)
    for step, value in valid:
        x, y = at(step, value)
        canvas[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = _RED
    text = {"Title": "training loss (blue line), validation loss (red squares) per step",
            "Range": f"loss {y_min:.6f} to {y_max:.6f}; steps 0 to {x_max}"}  # fmt: skip
    return encode_png(canvas, text)
