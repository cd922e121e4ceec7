"""``strategy: horovod``: data-parallel training with Horovod (gloo), an optional extra.

``tierflow train`` prepares the data as for every strategy, saves it in the run's
``horovod/`` folder (:meth:`~tierflow.train.data.Splits.save`), and runs ``horovodrun
-np W -H localhost:W --gloo python -m tierflow.train.horovod_loop RUN_DIR``. Each
process runs the same loop as a Ray Train worker (:func:`tierflow.train.loop.run`) with
the :mod:`~tierflow.train.strategies.horovod` strategy: the same slices of every global
batch as DDP, gradients averaged by ``hvd.DistributedOptimizer``, so a run follows the
single worker's loss curve. Checkpoints go to ``RUN_DIR/checkpoint_<step>``
(:class:`~tierflow.train.session.LocalSession`); a run started again continues from the
newest. It does not use Ray (Ray Train v2 deprecates its Horovod trainer). Build it with
``make horovod``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETTINGS_FILE = "settings.json"


def main(run_dir: str) -> int:
    """One Horovod process of the run prepared in ``run_dir``."""
    import horovod.torch as hvd  # type: ignore[import-not-found,import-untyped,unused-ignore]

    from tierflow.config.training import TrainingConfig
    from tierflow.train.data import Splits
    from tierflow.train.loop import WorkerSettings, run
    from tierflow.train.session import LocalSession

    folder = Path(run_dir)
    saved = json.loads((folder / SETTINGS_FILE).read_text())
    config = TrainingConfig.model_validate(saved["config"])
    settings = WorkerSettings(config, "horovod", use_gpu=bool(saved["use_gpu"]))
    hvd.init()
    session = LocalSession(folder, hvd.rank(), hvd.size(), keep=config.checkpoint.keep)
    run(settings, Splits.load(folder), session)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
