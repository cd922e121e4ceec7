"""Settings of the streaming daemons (``conf/streaming.yaml``), with environment overrides.

Every key can be overridden by ``TIERFLOW_STREAM_<KEY>`` (upper case), e.g.
``TIERFLOW_STREAM_GROUP_ID=features-b``; the value is read as a YAML scalar. A bad value,
from the file or the environment, fails at start with the file (or variable), key and
value named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field

from tierflow.config.loader import FrozenModel, parse_model
from tierflow.errors import ConfigError

ENV_PREFIX = "TIERFLOW_STREAM_"


class StreamingConfig(FrozenModel):
    """How the feature daemons consume, judge, write and report."""

    bootstrap_servers: str | None = None  # None: the local Kafka of conf/services.yaml
    # How clients authenticate; the password is the kafka_password secret (tierflow.secrets).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    sasl_username: str | None = None
    ssl_cafile: str | None = None  # the CA that signed the brokers' certificates
    group_id: Annotated[str, Field(min_length=1)] = "tierflow-features"
    topic_prefix: str = ""  # put before every topic name (environments sharing a cluster)
    dead_letter_suffix: Annotated[str, Field(min_length=1)] = ".dlq"
    # Replicas of the topics tierflow creates (dead letters, replays): 3 on a cluster.
    topic_replication_factor: Annotated[int, Field(ge=1, le=16)] = 1
    late_events: Literal["drop", "dead_letter"] = "drop"
    # Failed store writes in a row (backing off 0.5 s, 1 s, ... up to 10 s between them)
    # before the daemon gives up and exits with an error for its supervisor to restart.
    store_retries: Annotated[int, Field(ge=0, le=1000)] = 8
    max_poll_records: Annotated[int, Field(ge=1, le=100_000)] = 2000
    # A poll is also sized by time: at most about this long to apply (measured per
    # record as the daemon goes), so a burst is taken in slices that keep freshness low.
    poll_budget_ms: Annotated[int, Field(ge=1, le=60_000)] = 50
    poll_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    max_event_bytes: Annotated[int, Field(ge=64)] = 1_048_576
    session_timeout_ms: Annotated[int, Field(ge=6000, le=300_000)] = 10_000
    # How long a request to one broker may go unanswered before the client gives up on
    # it and asks another (a broker behind a dead link never answers at all).
    request_timeout_ms: Annotated[int, Field(ge=1000, le=600_000)] = 30_000
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 28400  # 0: any free port
    # Under the data folder unless absolute or an s3:// URI.
    event_log_dir: Annotated[str, Field(min_length=1)] = "events"
    event_log_batch_records: Annotated[int, Field(ge=1)] = 20_000
    event_log_interval_s: Annotated[float, Field(gt=0)] = 5.0


def load_streaming_config(path: Path, environ: Mapping[str, str] | None = None) -> StreamingConfig:
    """``path`` (``conf/streaming.yaml``; defaults when absent) with ``TIERFLOW_STREAM_*``.

    Raises:
        ConfigError: naming the file or variable, the key and the value.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, object] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"invalid configuration in {path}: expected a mapping of settings")
        data = dict(loaded or {})
        parse_model(StreamingConfig, data, str(path))
    fields = StreamingConfig.model_fields
    overrides = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in fields:
            raise ConfigError(
                f"invalid configuration in environment: {name} = {raw!r}: no setting "
                f"{key!r} (known: {', '.join(sorted(fields))})"
            )
        data[key] = yaml.safe_load(raw) if raw.strip() else None
        overrides.append(name)
    source = f"{path} with {', '.join(sorted(overrides))}" if overrides else str(path)
    return parse_model(StreamingConfig, data, source)
