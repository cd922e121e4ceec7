"""``strategy: horovod``: data-parallel training with Horovod (gloo), an optional extra.

``tierflow train`` plans and fits as for every strategy, saves the run's settings and
data description (no rows) in its ``horovod/`` folder, and runs ``horovodrun -np W -H
localhost:W --gloo python -m tierflow.train.horovod_loop RUN_DIR``. Each process runs
the same loop as a Ray Train worker (:func:`tierflow.train.loop.run`) with the
:mod:`~tierflow.train.strategies.horovod` strategy: it streams its own shard, as a DDP
worker does, and ``hvd.DistributedOptimizer`` averages the gradients, so a run follows
the single worker's loss curve. Checkpoints go to ``RUN_DIR/checkpoint_<step>``
(:class:`~tierflow.train.session.LocalSession`); a run started again continues from the
newest. It does not use Ray (Ray Train v2 deprecates its Horovod trainer). Build it with
``make horovod``.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

SETTINGS_FILE = "settings.pickle"


def main(run_dir: str) -> int:
    """One Horovod process of the run prepared in ``run_dir``."""
    import horovod.torch as hvd  # type: ignore[import-not-found,import-untyped,unused-ignore]

    from tierflow.train.loop import run
    from tierflow.train.session import LocalSession

    folder = Path(run_dir)
    # Written by this run's own driver (tierflow.train.runner.run_horovod).
    settings, data = pickle.loads((folder / SETTINGS_FILE).read_bytes())  # noqa: S301
    hvd.init()
    session = LocalSession(folder, hvd.rank(), hvd.size(), keep=settings.config.checkpoint.keep)
    run(settings, data, session)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
