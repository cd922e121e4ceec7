"""``pipeline``: the model's two stages pipelined over micro-batches, times data parallelism.

The stages are ``model.stages()``. Workers ``2d`` and ``2d + 1`` are data-parallel group
``d``: the first runs the first stage, the second the second. Each step, a group's share
of the global batch is cut into ``pipeline.microbatches`` equal micro-batches and run by
``torch.distributed.pipelining`` (GPipe or 1F1B): while the second stage works on one
micro-batch the first works on the next, so the stages overlap; only the pipeline's fill
and drain (its bubble, about ``1 / (microbatches + 1)`` of a step with two stages) is
idle. Gradients are summed over the micro-batches and scaled by their number, so the
step equals the whole batch's in one process; with several groups each stage's
gradients are then averaged over its peers in the other groups. Each stage has its own
optimizer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tierflow.train.strategies.base import Strategy, StrategyOptions

STAGES = 2


class Pipelined(Strategy):
    """Two stages per data-parallel group, micro-batches scheduled through them."""

    name: ClassVar[str] = "pipeline"

    def __init__(
        self, rank: int, world: int, device: Any, options: StrategyOptions | None = None
    ) -> None:
        super().__init__(rank, world, device, options)
        if world % STAGES:
            raise ValueError(f"the pipeline strategy needs an even number of workers, not {world}")
        self.stage_index, self.group_index = rank % STAGES, rank // STAGES
        self.groups = world // STAGES
        self.peer = rank + 1 if self.stage_index == 0 else rank - 1
        self._schedule: Any = None
        self._pairs: list[Any] = []  # each group's two stages (made in prepare)
        self._stage_peers: Any = None  # this stage's copies in the other groups

    @property
    def batch_share(self) -> tuple[int, int]:
        """Both stages of a group read the group's share of every global batch."""
        return self.group_index, self.groups

    def prepare(self, model: Any) -> None:
        """Keep this worker's stage; make the process groups (every worker makes all)."""
        import torch.distributed as dist

        first, second = model.stages()
        self.model = (first if self.stage_index == 0 else second).to(self.device)
        self.trained = self.model
        self._pairs = [
            dist.new_group([g * STAGES + s for s in range(STAGES)]) if self.groups > 1 else None
            for g in range(self.groups)
        ]
        peers = [dist.new_group(list(range(s, self.world, STAGES))) if self.groups > 1 else None
                 for s in range(STAGES)]  # fmt: skip
        self._stage_peers = peers[self.stage_index]

    def _scheduled(self, rows: int, loss_fn: Any) -> Any:
        """The schedule, made at the first step (it needs the loss function)."""
        if self._schedule is None:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            count = self.options.microbatches
            if rows % count:
                raise ValueError(
                    f"pipeline: a group's {rows} rows of each batch do not cut into {count} "
                    "equal micro-batches"
                )
            stage = PipelineStage(self.model, self.stage_index, STAGES, self.device,
                                  group=self._pairs[self.group_index])  # fmt: skip
            # 1F1B needs a micro-batch per stage at least; below that both schedules are
            # the same (one micro-batch: the blocking split, no overlap).
            one_f_one_b = self.options.schedule == "1f1b" and count >= STAGES
            kind = Schedule1F1B if one_f_one_b else ScheduleGPipe
            self._schedule = kind(stage, n_microbatches=count, loss_fn=loss_fn)
        return self._schedule

    def forward_backward(self, x: Any, y: Any, loss_fn: Any) -> Any:
        """One step of the micro-batched pipeline; the group's mean loss on both stages."""
        import torch
        import torch.distributed as dist

        schedule = self._scheduled(len(y), loss_fn)
        if self.stage_index == 0:
            schedule.step(x.to(self.device))
            loss = torch.zeros((), device=self.device)
            dist.recv(loss, src=self.peer)
        else:
            losses: list[Any] = []
            schedule.step(target=y.to(self.device), losses=losses)
            # Equal micro-batches: the mean of their means is the group's mean.
            loss = torch.stack([v.detach() for v in losses]).mean()
            dist.send(loss.contiguous(), dst=self.peer)
        if self.groups > 1:
            for param in self.model.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad, group=self._stage_peers)
                    param.grad.div_(self.groups)
        return loss

    def reduce_losses(self, losses: list[Any]) -> list[float]:
        """The mean over the groups (each over an equal share): one ``all_reduce``."""
        import torch

        if self.groups == 1:
            return [float(loss) for loss in losses]
        import torch.distributed as dist

        total = torch.stack(losses)
        dist.all_reduce(total, group=self._stage_peers)
        return [float(v) for v in (total / self.groups).tolist()]

    def evaluate(self, x: Any, y: Any, loss_fn: Any) -> float:
        """The loss of both stages on ``x``, ``y``, the same on both (no micro-batches)."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            if self.stage_index == 0:
                dist.send(self.model(x.to(self.device)).contiguous(), dst=self.peer)
                loss = torch.zeros((), device=self.device)
                dist.recv(loss, src=self.peer)
                return float(loss)
            hidden = torch.empty((len(y), x.shape[1], self._width()), device=self.device)
            dist.recv(hidden, src=self.peer)
            loss = loss_fn(self.model(hidden), y.to(self.device))
            dist.send(loss.contiguous(), dst=self.peer)
            return float(loss)

    def state(self, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """Both stages' state (group 0's), gathered on rank 0 (a collective)."""
        import torch.distributed as dist

        mine = {"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}  # fmt: skip
        gathered: list[Any] = [None] * self.world if self.rank == 0 else []
        dist.gather_object(mine, gathered if self.rank == 0 else None, dst=0)
        if self.rank != 0:
            return {}
        stages = gathered[:STAGES]  # every group holds the same weights
        return {
            "model": {"stages": [g["model"] for g in stages]},
            "optimizer": [g["optimizer"] for g in stages],
            "scheduler": [g["scheduler"] for g in stages],
        }

    def load(self, state: dict[str, Any], optimizer: Any, scheduler: Any) -> None:
        """This worker's stage, optimizer and schedule."""
        self.model.load_state_dict(state["model"]["stages"][self.stage_index])
        optimizer.load_state_dict(state["optimizer"][self.stage_index])
        scheduler.load_state_dict(state["scheduler"][self.stage_index])

    @staticmethod
    def final_model(model: Any, state: dict[str, Any]) -> Any:
        """The whole model from the two stages' weights."""
        first, second = model.stages()
        first.load_state_dict(state["model"]["stages"][0])
        second.load_state_dict(state["model"]["stages"][1])
        return model

    def _width(self) -> int:
        """The token width the second stage expects (its first linear layer's input)."""
        import torch

        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear):
                return int(module.in_features)
        raise ValueError("the second pipeline stage has no linear layer to infer its width")
