"""``ddp``: ``DistributedDataParallel`` over the workers (gloo on CPU, NCCL on GPU).

Each worker trains on its slice of every global batch and the gradients are averaged, so
a step equals the single worker's step on the whole batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tierflow.train.strategies.base import Strategy


class DataParallel(Strategy):
    """The model replicated on every worker, gradients averaged by DDP."""

    name: ClassVar[str] = "ddp"

    @property
    def batch_share(self) -> tuple[int, int]:
        """This worker's slice: its rank's of ``world``."""
        return self.rank, self.world

    @property
    def eval_share(self) -> tuple[int, int]:
        """Each worker evaluates a ``1/world`` share of a split."""
        return self.rank, self.world

    def all_sum(self, values: list[float]) -> tuple[float, ...]:
        """Summed over the workers (``all_reduce``, in float64)."""
        import torch
        import torch.distributed as dist

        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return tuple(float(v) for v in total.tolist())

    def prepare(self, model: Any) -> None:
        """Wrap the placed model in ``DistributedDataParallel``."""
        from torch.nn.parallel import DistributedDataParallel

        self.model = model.to(self.device)
        on_gpu = self.device.type == "cuda"
        self.trained = DistributedDataParallel(
            self.model, device_ids=[self.device.index] if on_gpu else None
        )

    def reduce_losses(self, losses: list[Any]) -> list[float]:
        """The workers' mean losses (equal slices): one ``all_reduce`` for the group."""
        import torch
        import torch.distributed as dist

        total = torch.stack(losses)
        dist.all_reduce(total)
        return [float(v) for v in (total / self.world).tolist()]
