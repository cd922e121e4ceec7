"""``horovod``: data parallel with Horovod's ``DistributedOptimizer`` (gloo), no Ray.

The same slices of every global batch as ``ddp``; Horovod averages the gradients in the
optimizer's step and the loss with ``allreduce``, so a run follows the single worker's
loss curve as DDP does. Run by ``horovodrun`` (:mod:`tierflow.train.horovod_loop`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from tierflow.train.strategies.ddp import DataParallel


class HorovodDataParallel(DataParallel):
    """The model replicated; Horovod's optimizer averages the gradients."""

    name: ClassVar[str] = "horovod"
    _losses = 0  # pending loss all-reduces get names of their own

    def prepare(self, model: Any) -> None:
        """The model, placed (Horovod wraps the optimizer, not the model)."""
        self.model = model.to(self.device)
        self.trained = self.model

    def wrap_optimizer(self, optimizer: Any) -> Any:
        """Horovod's averaging optimizer, every rank starting from rank 0's parameters.

        Not ``broadcast_optimizer_state``: on an empty state it takes a step with zero
        gradients to create one, which counts as AdamW's first step and shifts every
        later update. Every rank starts empty, or loads the same checkpoint.
        """
        import horovod.torch as hvd  # type: ignore[import-not-found,import-untyped,unused-ignore]

        named = self.model.named_parameters()
        wrapped = hvd.DistributedOptimizer(optimizer, named_parameters=named)
        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        return wrapped

    def all_sum(self, values: list[float]) -> tuple[float, ...]:
        """Summed over the workers (Horovod's ``allreduce``, in float64)."""
        import horovod.torch as hvd  # type: ignore[import-not-found,import-untyped,unused-ignore]
        import torch

        total = hvd.allreduce(torch.tensor(values, dtype=torch.float64), op=hvd.Sum, name="sums")
        return tuple(float(v) for v in total.tolist())

    def reduce_losses(self, losses: list[Any]) -> list[float]:
        """The workers' mean losses (Horovod's ``allreduce`` averages), one for the group."""
        import horovod.torch as hvd  # type: ignore[import-not-found,import-untyped,unused-ignore]
        import torch

        self._losses += 1
        mean = hvd.allreduce(torch.stack(losses), name=f"losses.{self._losses}")
        return [float(v) for v in mean.tolist()]
