"""Settings read once: the environment's ``TIERFLOW_*`` variables and the YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierflow.config.loader import load_model
from tierflow.config.project import ProjectConfig
from tierflow.errors import ConfigError
from tierflow.settings import env_settings


def test_variables_are_typed_and_a_bad_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_MEMORY_GB", "1.5")
    monkeypatch.setenv("TIERFLOW_ONLINE_STORE", "redis")
    monkeypatch.setenv("TIERFLOW_STREAM_GROUP_ID", "not a field: streaming.yaml's own")
    env = env_settings()
    assert (env.memory_gb, env.online_store) == (1.5, "redis")
    assert env_settings() is env  # read once while nothing changes
    monkeypatch.setenv("TIERFLOW_MEMORY_GB", "lots")
    with pytest.raises(ConfigError, match=r"TIERFLOW_MEMORY_GB = 'lots'"):
        env_settings()
    monkeypatch.setenv("TIERFLOW_MEMORY_GB", "2")
    monkeypatch.setenv("TIERFLOW_ONLINE_STORE", "memcached")
    with pytest.raises(ConfigError, match=r"TIERFLOW_ONLINE_STORE = 'memcached'"):
        env_settings()


def test_a_yaml_file_is_parsed_once_unless_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tierflow.yaml"
    path.write_text("data_dir: one\n")
    first = load_model(ProjectConfig, path)
    assert load_model(ProjectConfig, path) is first
    path.write_text("data_dir: second\n")
    assert load_model(ProjectConfig, path).data_dir == "second"
