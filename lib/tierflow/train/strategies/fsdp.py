"""``fsdp``: FSDP2 ``fully_shard`` on every layer with parameters, and on the model.

Parameters, gradients and optimizer state are sharded across the workers; each layer is
gathered whole while it runs. Runs on CPU with gloo. The saved state is the whole model's
(gathered on rank 0), so a checkpoint loads into any strategy.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tierflow.train.strategies.ddp import DataParallel


class FullySharded(DataParallel):
    """Data parallel with every layer sharded (FSDP2)."""

    name: ClassVar[str] = "fsdp"

    @property
    def eval_share(self) -> tuple[int, int]:
        """Every worker evaluates the whole split: a sharded forward needs them all."""
        return 0, 1

    def prepare(self, model: Any) -> None:
        """Shard each layer that holds parameters, then the model."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.model = model.to(self.device)
        mesh = init_device_mesh(self.device.type, (self.world,))
        # Outermost first, and a module whose parameters an outer one already took is
        # left alone: fully_shard takes every parameter below the module, and attention
        # uses its output projection's weight without calling it, so the two must be
        # gathered together.
        taken: set[int] = set()
        for module in list(self.model.modules())[1:]:
            own = [id(p) for p in module.parameters(recurse=False)]
            if own and not taken.intersection(own):
                fully_shard(module, mesh=mesh)
                taken.update(id(p) for p in module.parameters())
        fully_shard(self.model, mesh=mesh)
        self.trained = self.model

    def state(self, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """The full (unsharded) model and optimizer state (a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        return {
            "model": get_model_state_dict(self.model, options=options),
            "optimizer": get_optimizer_state_dict(self.model, optimizer, options=options),
            "scheduler": [scheduler.state_dict()],
        }

    def load(self, state: dict[str, Any], optimizer: Any, scheduler: Any) -> None:
        """Shard a full state back onto the workers."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        set_model_state_dict(self.model, state["model"], options=options)
        set_optimizer_state_dict(self.model, optimizer, state["optimizer"], options=options)
        scheduler.load_state_dict(state["scheduler"][0])
