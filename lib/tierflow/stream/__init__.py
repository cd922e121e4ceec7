"""Streaming: feature daemons, the event log and the replay tool (Kafka, imported lazily)."""
