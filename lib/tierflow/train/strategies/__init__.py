"""Training strategies: one module each, behind the contract in :mod:`.base`.

``single`` (:mod:`.base`), ``ddp`` (:mod:`.ddp`), ``fsdp`` (:mod:`.fsdp`), ``pipeline``
(:mod:`.pipeline`) and ``horovod`` (:mod:`.horovod`). Imported by name when a run needs
one, so that choosing a strategy imports neither torch nor Horovod.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierflow.train.strategies.base import Strategy

_CLASSES = {
    "single": ("base", "Strategy"),
    "ddp": ("ddp", "DataParallel"),
    "fsdp": ("fsdp", "FullySharded"),
    "pipeline": ("pipeline", "Pipelined"),
    "horovod": ("horovod", "HorovodDataParallel"),
}


def strategy_class(name: str) -> type[Strategy]:
    """The strategy called ``name``.

    Raises:
        ValueError: no strategy of that name.
    """
    if name not in _CLASSES:
        raise ValueError(f"no training strategy {name!r} (known: {', '.join(_CLASSES)})")
    module, cls = _CLASSES[name]
    found: type[Strategy] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return found
