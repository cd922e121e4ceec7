"""The object store's settings: one source of truth, spelled for each library."""

from __future__ import annotations

import pytest

from tierflow.config.project import ObjectStoreConfig, ProjectConfig
from tierflow.errors import ConfigError
from tierflow.storage import ObjectStore, delta_path, is_object_uri, split_uri

KEYS = {"TIERFLOW_S3_ACCESS_KEY_ID": "key-id", "TIERFLOW_S3_SECRET_ACCESS_KEY": "s3cret-value"}


def test_object_uris():
    assert is_object_uri("s3://b/k") and is_object_uri("S3A://b/k")
    assert not is_object_uri("/data/s3/k") and not is_object_uri("gs://b/k")
    assert split_uri("s3://bucket/a/b/") == "bucket/a/b"
    assert delta_path("s3a://bucket/t") == "s3://bucket/t"


def test_minio_endpoint_is_spelled_for_each_library():
    config = ObjectStoreConfig(endpoint_url="http://127.0.0.1:29000/")
    store = ObjectStore.from_config(config, KEYS)
    assert store.endpoint_url == "http://127.0.0.1:29000"
    assert store.virtual_hosted_style is False  # path style whenever an endpoint is set
    delta = store.delta_options()
    assert delta["AWS_ENDPOINT_URL"] == "http://127.0.0.1:29000"
    assert delta["AWS_ALLOW_HTTP"] == "true"
    assert delta["AWS_CONDITIONAL_PUT"] == "etag"
    assert (delta["AWS_ACCESS_KEY_ID"], delta["AWS_SECRET_ACCESS_KEY"]) == (
        "key-id",
        "s3cret-value",
    )
    hadoop = store.hadoop_conf()
    assert hadoop["fs.s3a.endpoint"] == "http://127.0.0.1:29000"
    assert hadoop["fs.s3a.path.style.access"] == "true"
    assert hadoop["fs.s3a.connection.ssl.enabled"] == "false"
    assert hadoop["fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert hadoop["fs.s3a.secret.key"] == "s3cret-value"


def test_aws_defaults_leave_the_default_chain_alone():
    store = ObjectStore.from_config(ObjectStoreConfig(region="eu-west-1"), {})
    assert not store.configured
    assert store.virtual_hosted_style is True
    options = store.delta_options()
    assert "AWS_ACCESS_KEY_ID" not in options and "AWS_ENDPOINT_URL" not in options
    assert options["AWS_REGION"] == "eu-west-1"
    assert "fs.s3a.access.key" not in store.hadoop_conf()


def test_the_environment_overrides_the_endpoint_and_secrets_never_print():
    env = KEYS | {"TIERFLOW_S3_ENDPOINT_URL": "https://minio.internal:9000"}
    store = ObjectStore.from_config(ObjectStoreConfig(endpoint_url="http://other:1"), env)
    assert store.endpoint_url == "https://minio.internal:9000"
    assert "AWS_ALLOW_HTTP" not in store.delta_options()
    assert "s3cret-value" not in repr(store) and "s3cret-value" not in str(store)


def test_half_a_key_pair_or_a_bad_endpoint_is_a_config_error():
    with pytest.raises(ConfigError, match="TIERFLOW_S3_ACCESS_KEY_ID is set but TIERFLOW_S3_SEC"):
        ObjectStore.from_config(ObjectStoreConfig(), {"TIERFLOW_S3_ACCESS_KEY_ID": "x"})
    with pytest.raises(ConfigError, match="TIERFLOW_S3_ENDPOINT_URL = 'minio:9000'"):
        ObjectStore.from_config(ObjectStoreConfig(), {"TIERFLOW_S3_ENDPOINT_URL": "minio:9000"})


def test_keys_in_the_settings_file_are_refused():
    with pytest.raises(ValueError, match="secret_access_key"):
        ProjectConfig.model_validate({"object_store": {"secret_access_key": "x"}})
