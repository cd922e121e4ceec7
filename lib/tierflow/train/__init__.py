"""Distributed training on Ray Train: data-parallel and model-parallel (torch imported lazily)."""
