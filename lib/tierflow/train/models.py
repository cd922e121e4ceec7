"""Model factories: the built-in MLP and small transformer, and the registry for your own.

A factory takes the number of input features and the config's ``params`` and returns a
``torch.nn.Module`` mapping a float tensor ``[batch, n_features]`` to ``[batch]`` logits
(or predictions for regression). A model that can be split for the pipeline strategy
also has ``stages() -> (first, second)``: two modules whose composition is the model.

Register your own with ``@register_model("name")`` in a module listed under
``transform_modules`` (the same modules that register job transforms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tierflow.errors import ConfigError

ModelFactory = Callable[..., Any]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a model factory under ``name``."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def build_model(name: str, n_features: int, params: dict[str, Any]) -> Any:
    """Build a registered model.

    Raises:
        ConfigError: unknown model or parameters it does not take.
    """
    _register_builtins()
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"no model {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    try:
        return factory(n_features, **params)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad params {params}: {exc}") from None


def _register_builtins() -> None:
    if "mlp" in _REGISTRY:
        return
    import torch
    from torch import nn

    class MLP(nn.Module):
        """Dense layers with ReLU and dropout, one output."""

        def __init__(
            self, n_features: int, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.0
        ) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            width = n_features
            for size in hidden:
                layers += [nn.Linear(width, size), nn.ReLU()]
                if dropout:
                    layers.append(nn.Dropout(dropout))
                width = size
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).squeeze(-1)  # type: ignore[no-any-return]

    class Encoder(nn.Module):
        """Features as tokens (value times an embedding, plus a position), then layers."""

        def __init__(self, n_features: int, d_model: int, heads: int, layers: int) -> None:
            super().__init__()
            self.value = nn.Parameter(torch.randn(n_features, d_model) * 0.02)
            self.position = nn.Parameter(torch.randn(n_features, d_model) * 0.02)
            layer = nn.TransformerEncoderLayer(
                d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
            )
            self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = x.unsqueeze(-1) * self.value + self.position
            return self.layers(tokens)  # type: ignore[no-any-return]

    class Decoder(nn.Module):
        """Mean-pool the tokens, then a small dense head."""

        def __init__(self, d_model: int) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.head(h.mean(dim=1)).squeeze(-1)  # type: ignore[no-any-return]

    class Head(nn.Module):
        """The pipeline's first stage: the tokens and the first ``k`` encoder layers."""

        def __init__(self, encoder: Encoder, layers: list[nn.Module]) -> None:
            super().__init__()
            self.value, self.position = encoder.value, encoder.position  # shared, not copied
            self.layers = nn.ModuleList(layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.unsqueeze(-1) * self.value + self.position
            for layer in self.layers:
                h = layer(h)
            return h

    class Tail(nn.Module):
        """The pipeline's second stage: the other encoder layers, then the decoder."""

        def __init__(self, layers: list[nn.Module], decoder: Decoder) -> None:
            super().__init__()
            self.layers = nn.ModuleList(layers)
            self.decoder = decoder

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                h = layer(h)
            return self.decoder(h)  # type: ignore[no-any-return]

    class TabTransformer(nn.Module):
        """Encoder then decoder; ``stages()`` splits it in two for the pipeline strategy."""

        def __init__(
            self, n_features: int, d_model: int = 32, heads: int = 4, layers: int = 2
        ) -> None:
            super().__init__()
            self.encoder = Encoder(n_features, d_model, heads, layers)
            self.decoder = Decoder(d_model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(x))  # type: ignore[no-any-return]

        def stages(self) -> tuple[nn.Module, nn.Module]:
            # Half the encoder's layers on each stage (the first at least one), so the
            # two stages have about the same work and a pipeline overlaps them.
            layers = list(self.encoder.layers.layers)
            k = max(1, len(layers) // 2)
            return Head(self.encoder, layers[:k]), Tail(layers[k:], self.decoder)

    _REGISTRY["mlp"] = lambda n, **kw: MLP(n, tuple(kw.pop("hidden", (64, 32))), **kw)
    _REGISTRY["transformer"] = TabTransformer
