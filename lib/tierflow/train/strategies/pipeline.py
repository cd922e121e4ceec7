"""``pipeline``: the model's two stages (``model.stages()``) on two workers.

Worker 0 runs the first stage and sends its activations; worker 1 runs the second,
computes the loss, and sends the activations' gradient back. Each stage has its own
optimizer. The step is the same computation as in one process, split across two: both
workers see the whole global batch (worker 0 its features, worker 1 its labels).
"""

from __future__ import annotations

from typing import Any, ClassVar

from tierflow.train.strategies.base import Strategy


class TwoStages(Strategy):
    """The first stage on rank 0, the second on rank 1, blocking send/recv between."""

    name: ClassVar[str] = "pipeline"

    def prepare(self, model: Any) -> None:
        """Keep this rank's stage only."""
        first, second = model.stages()
        self.model = (first if self.rank == 0 else second).to(self.device)
        self.trained = self.model

    def forward_backward(self, x: Any, y: Any, loss_fn: Any) -> Any:
        """One step of the two stages; the loss on both ranks."""
        import torch
        import torch.distributed as dist

        if self.rank == 0:
            hidden = self.trained(x.to(self.device))
            dist.send(hidden.detach().contiguous(), dst=1)
            grad = torch.empty_like(hidden)
            dist.recv(grad, src=1)
            hidden.backward(grad)
            loss = torch.zeros((), device=self.device)
            dist.recv(loss, src=1)
            return loss
        hidden = torch.empty((len(y), x.shape[1], self._width()), device=self.device)
        dist.recv(hidden, src=0)
        hidden.requires_grad_(True)
        loss = loss_fn(self.trained(hidden), y.to(self.device))
        loss.backward()
        assert hidden.grad is not None
        dist.send(hidden.grad.contiguous(), dst=0)
        dist.send(loss.detach().contiguous(), dst=0)
        return loss.detach()

    def evaluate(self, x: Any, y: Any, loss_fn: Any) -> float:
        """The loss of both stages on ``x``, ``y``, the same on both ranks."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            if self.rank == 0:
                dist.send(self.trained(x.to(self.device)).contiguous(), dst=1)
                loss = torch.zeros((), device=self.device)
                dist.recv(loss, src=1)
                return float(loss)
            hidden = torch.empty((len(y), x.shape[1], self._width()), device=self.device)
            dist.recv(hidden, src=0)
            loss = loss_fn(self.trained(hidden), y.to(self.device))
            dist.send(loss.contiguous(), dst=0)
            return float(loss)

    def state(self, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """Both stages' state, gathered on rank 0 (a collective)."""
        import torch.distributed as dist

        mine = {"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}  # fmt: skip
        gathered: list[Any] = [None] * self.world if self.rank == 0 else []
        dist.gather_object(mine, gathered if self.rank == 0 else None, dst=0)
        if self.rank != 0:
            return {}
        return {
            "model": {"stages": [g["model"] for g in gathered]},
            "optimizer": [g["optimizer"] for g in gathered],
            "scheduler": [g["scheduler"] for g in gathered],
        }

    def load(self, state: dict[str, Any], optimizer: Any, scheduler: Any) -> None:
        """This rank's stage, optimizer and schedule."""
        self.model.load_state_dict(state["model"]["stages"][self.rank])
        optimizer.load_state_dict(state["optimizer"][self.rank])
        scheduler.load_state_dict(state["scheduler"][self.rank])

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

        for module in self.trained.modules():
            if isinstance(module, torch.nn.Linear):
                return int(module.in_features)
        raise ValueError("the second pipeline stage has no linear layer to infer its width")
