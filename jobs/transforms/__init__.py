"""The project's transforms: pure functions over Narwhals frames, registered by name."""
