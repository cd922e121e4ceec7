from __future__ import annotations

from pathlib import Path

import pytest

from tierflow.config.services import ServicesConfig, load_services_config
from tierflow.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path):
    config = load_services_config(None, tmp_path / "absent.yaml")
    assert config == ServicesConfig()
    assert config.host == "127.0.0.1"
    assert len(set(config.all_ports().values())) == len(config.all_ports())


def test_file_overrides_defaults(tmp_path):
    path = write(tmp_path, "kafka:\n  port: 39092\nredis:\n  port: 36379\n")
    config = load_services_config(path, tmp_path / "unused.yaml")
    assert config.kafka.port == 39092
    assert config.redis.port == 36379
    assert config.spark.master_port == ServicesConfig().spark.master_port


def test_bad_value_names_file_key_and_value(tmp_path):
    path = write(tmp_path, "kafka:\n  port: 80\n")
    with pytest.raises(ConfigError) as err:
        load_services_config(path, tmp_path / "unused.yaml")
    message = str(err.value)
    assert str(path) in message
    assert "kafka.port" in message
    assert "80" in message


def test_unknown_key_is_an_error(tmp_path):
    path = write(tmp_path, "redis:\n  prot: 6380\n")
    with pytest.raises(ConfigError, match=r"redis\.prot = 6380"):
        load_services_config(path, tmp_path / "unused.yaml")


def test_clashing_ports_name_both_keys(tmp_path):
    path = write(tmp_path, "kafka:\n  port: 26379\n")
    with pytest.raises(
        ConfigError, match=r"redis\.port and kafka\.port|kafka\.port and redis\.port"
    ):
        load_services_config(path, tmp_path / "unused.yaml")


def test_port_inside_ray_worker_range_is_refused(tmp_path):
    path = write(tmp_path, "redis:\n  port: 30010\n")
    with pytest.raises(ConfigError, match=r"redis\.port = 30010 lies in Ray's worker port range"):
        load_services_config(path, tmp_path / "unused.yaml")


def test_only_loopback_hosts(tmp_path):
    path = write(tmp_path, "host: 0.0.0.0\n")
    with pytest.raises(ConfigError, match=r"host = '0\.0\.0\.0'.*loopback"):
        load_services_config(path, tmp_path / "unused.yaml")


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML") as err:
        load_services_config(path, tmp_path / "unused.yaml")
    assert str(path) in str(err.value)


def test_explicit_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_services_config(tmp_path / "missing.yaml", tmp_path / "unused.yaml")


def test_config_is_frozen():
    config = ServicesConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.kafka.port = 1  # type: ignore[misc]
