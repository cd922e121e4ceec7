"""The training strategy contract: how one worker's model takes part in a step.

The loop (:mod:`tierflow.train.loop`) calls these hooks and never asks which strategy
it runs. The base class is training in one process; a strategy overrides only what it
changes: how the model is wrapped (``prepare``), which share of each global batch the
worker trains on (``batch_share``), how the optimizer is wrapped, how the steps' losses
are made the global batches' (``reduce_losses``, a group of steps at once), and how the
whole state is gathered and put back (``state``, ``load``). Every hook that communicates
is called by every worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class StrategyOptions:
    """Settings a strategy may take from the run's config (``pipeline:`` for now)."""

    microbatches: int = 4
    schedule: str = "1f1b"


class Strategy:
    """Training in one process: the model whole, the whole global batch per step."""

    name: ClassVar[str] = "single"

    def __init__(
        self, rank: int, world: int, device: Any, options: StrategyOptions | None = None
    ) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.options = options or StrategyOptions()
        self.model: Any = None  # the model as built (whole, or the stage this worker runs)
        self.trained: Any = None  # what is called and stepped: the model, possibly wrapped

    @property
    def batch_share(self) -> tuple[int, int]:
        """``(part, parts)``: the equal slice of every global batch this worker trains on."""
        return 0, 1

    @property
    def eval_share(self) -> tuple[int, int]:
        """``(part, parts)``: the share of a split this worker evaluates.

        Its blocks whose number is ``part`` modulo ``parts``; above one part,
        :meth:`all_sum` adds the workers' sums up.
        """
        return 0, 1

    def all_sum(self, values: list[float]) -> tuple[float, ...]:
        """``values`` summed over the workers that share the evaluation."""
        return tuple(values)

    def prepare(self, model: Any) -> None:
        """Place (and wrap) the model for this strategy."""
        self.model = model.to(self.device)
        self.trained = self.model

    def parameters(self) -> Iterator[Any]:
        """The parameters this worker's optimizer steps."""
        return iter(self.trained.parameters())

    def wrap_optimizer(self, optimizer: Any) -> Any:
        """The optimizer the loop steps (a strategy may wrap it to average gradients)."""
        return optimizer

    def forward_backward(self, x: Any, y: Any, loss_fn: Any) -> Any:
        """Forward and backward of this worker's rows; returns their loss (detached)."""
        loss = loss_fn(self.trained(x.to(self.device)), y.to(self.device))
        loss.backward()
        return loss.detach()

    def reduce_losses(self, losses: list[Any]) -> list[float]:
        """Each step's global batch mean loss, from this worker's losses of those steps.

        The same values on every worker. The loop calls it for a group of steps at once
        (long after they ran): a data-parallel strategy reduces them in one collective
        instead of one per step, and no step waits on it.
        """
        return [float(loss) for loss in losses]

    def evaluate(self, x: Any, y: Any, loss_fn: Any) -> float:
        """The mean loss of the model on ``x``, ``y`` (no gradients, no wrapper's hooks)."""
        import torch

        with torch.no_grad():
            return float(loss_fn(self.model(x.to(self.device)), y.to(self.device)))

    def state(self, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """The whole model, optimizer and schedule state, complete on rank 0."""
        return {"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": [scheduler.state_dict()]}  # fmt: skip

    def load(self, state: dict[str, Any], optimizer: Any, scheduler: Any) -> None:
        """Put back what :meth:`state` returned (every worker reads the same state)."""
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"][0])

    @staticmethod
    def final_model(model: Any, state: dict[str, Any]) -> Any:
        """``model`` (built whole, in one process) with a saved state's weights."""
        model.load_state_dict(state["model"])
        return model
