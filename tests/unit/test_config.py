"""Config parsing, layering and validation (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from videodb.config import GUIDE_PARAMETERS, Settings, load_settings, parse_assignments, redacted
from videodb.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "platform.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "platform.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_guides_values() -> None:
    s = Settings()
    assert [(n.name, n.port) for n in s.nodes] == [
        ("postgres-video-master", 5433),
        ("postgres-video-slave", 5434),
    ]
    assert (s.haproxy.write_port, s.haproxy.read_port, s.haproxy.stats_port) == (5435, 5436, 8404)
    assert s.database.name == "video_platform"
    assert s.database.app_user == "upload_user"
    assert s.database.app_password.get_secret_value() == "upload_pass"
    assert s.database.replication_user == "replicator"
    assert s.postgresql.parameters == GUIDE_PARAMETERS
    assert s.postgresql.parameters["wal_buffers"] == "16MB"
    assert s.haproxy.maxconn == 2000


def test_shipped_config_file_equals_the_defaults() -> None:
    loaded = load_settings(SHIPPED, env={}, require_file=True)
    assert loaded.settings == Settings()


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[haproxy]\nwrite_port = 6000\nread_port = 6001\n")
    env = {"VIDEODB__HAPROXY__WRITE_PORT": "6100", "DB_USERNAME": "app", "DB_PASSWORD": "s3cret"}
    loaded = load_settings(path, env=env, assignments=["haproxy.write_port=6200"])
    s = loaded.settings
    assert s.haproxy.write_port == 6200
    assert s.haproxy.read_port == 6001
    assert s.database.app_user == "app"
    assert s.database.app_password.get_secret_value() == "s3cret"
    assert not s.uses_dev_password()
    assert loaded.sources["haproxy.write_port"] == "flag --set haproxy.write_port"
    assert loaded.sources["haproxy.read_port"] == str(path)


def test_node_ports_can_be_set_by_index_and_parameters_by_name() -> None:
    loaded = load_settings(
        None,
        env={},
        assignments=["nodes.1.port=7434", "postgresql.parameters.work_mem=64MB"],
    )
    assert loaded.settings.nodes[1].port == 7434
    assert loaded.settings.nodes[1].name == "postgres-video-slave"
    assert loaded.settings.postgresql.parameters["work_mem"] == "64MB"
    assert loaded.settings.postgresql.parameters["shared_buffers"] == "256MB"


def test_bad_value_names_file_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[haproxy]\nwrite_port = "abc"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert str(path) in message
    assert "haproxy.write_port" in message
    assert "'abc'" in message


def test_out_of_range_port_from_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment VIDEODB__HAPROXY__READ_PORT.*70000"):
        load_settings(None, env={"VIDEODB__HAPROXY__READ_PORT": "70000"})


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[haproxy\nwrite_port = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(path) in str(info.value) and "line 1" in str(info.value)


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "[haproxy]\nwirte_port = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'haproxy.wirte_port'"):
        load_settings(path, env={})


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={}, require_file=True)


def test_two_services_on_one_port_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"port 5433 is given to both"):
        load_settings(None, env={}, assignments=["haproxy.write_port=5433"])


def test_non_loopback_listen_host_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_settings(None, env={}, assignments=["listen_host=10.0.0.5"])


def test_patroni_timings_must_fit_the_ttl() -> None:
    with pytest.raises(ConfigError, match="loop_wait"):
        load_settings(None, env={}, assignments=["patroni.retry_timeout=15"])


def test_malformed_set_flag_is_rejected() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["haproxy.write_port"])


def test_bad_password_value_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"DB_PASSWORD": ""})
    assert "app_password" in str(info.value)
    # A value refused for its type is named by key and source, and shown only as stars.
    config = tmp_path / "platform.toml"
    config.write_text("[database]\napp_password = 987654321\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config, env={}, require_file=True)
    message = str(refused.value)
    assert "database.app_password" in message and str(config) in message
    assert "987654321" not in message and "********" in message


def test_redacted_hides_the_application_password() -> None:
    loaded = load_settings(None, env={"DB_PASSWORD": "hunter2-secret"})
    data = redacted(loaded.settings)
    assert "hunter2-secret" not in repr(data)
    assert data["database"]["app_password"] == "********"


def test_timing_profiles_and_explicit_overrides() -> None:
    def timings(*assignments: str) -> tuple[int, int, int]:
        return load_settings(None, env={}, assignments=list(assignments)).settings.patroni.timings()

    assert timings() == (20, 1, 3)
    assert timings("patroni.profile=default") == (30, 10, 10)
    assert timings("patroni.profile=safe") == (60, 10, 25)
    assert timings("patroni.profile=safe", "patroni.ttl=90") == (90, 10, 25)


def test_unknown_failover_mode_is_rejected_with_its_value() -> None:
    with pytest.raises(ConfigError, match=r"patroni.failover: bad value 'sometimes'"):
        load_settings(None, env={}, assignments=["patroni.failover=sometimes"])


def test_a_bad_value_from_a_named_flag_names_that_flag() -> None:
    with pytest.raises(ConfigError, match=r"flag --failover: key patroni\.failover") as info:
        load_settings(
            None,
            env={},
            assignments=["patroni.failover=sometimes"],
            flag_names={"patroni.failover": "--failover"},
        )
    assert "--set" not in str(info.value)
