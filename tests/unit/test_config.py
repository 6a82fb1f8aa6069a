"""Config loading: every bad file gets an error that names the file and the key."""
from __future__ import annotations

import pytest

from vigil.config import ConfigError, load, loads
from vigil.engine.config import EngineConfig
from vigil.manager.config import ManagerConfig

pytestmark = pytest.mark.unit


def test_minimal_engine_config_gets_defaults():
    cfg = loads("engine_id: e1\n", EngineConfig)
    assert cfg.engine_id == "e1"
    assert cfg.bridge.ports == ["eth0", "eth1"]
    assert cfg.learning.period == 7200.0
    assert cfg.mqtt.port == 1883


@pytest.mark.parametrize("text, key, words", [
    ("", "engine_id", "required key is missing"),
    ("engine_id: e1\nbogus: 1\n", "bogus", "unknown key"),
    ("engine_id: e1\nflows: {interval: fast}\n", "flows.interval", "must be a number"),
    ("engine_id: e1\nflows: {interval: 0.01}\n", "flows.interval", "between 0.2 and 3600"),
    ("engine_id: e1\nmqtt: {port: 70000}\n", "mqtt.port", "1..65535"),
    ("engine_id: e1\nmqtt: {transport: unix}\n", "mqtt.path", "required when transport is unix"),
    ("engine_id: e1\nmqtt: {transport: quic}\n", "mqtt.transport", "must be one of"),
    ("engine_id: 'a/b'\n", "engine_id", "MQTT topic level"),
    ("engine_id: e1\nbridge: {ports: [eth0]}\n", "bridge.ports", "exactly two"),
    ("engine_id: e1\nbridge: {ports: [eth0, 7]}\n", "bridge.ports[1]", "must be a string"),
    ("engine_id: e1\nlearning: {period: yes}\n", "learning.period", "must be a number"),
    ("engine_id: e1\nlog: {level: LOUD}\n", "log.level", "must be one of"),
    ("engine_id: e1\nflows: [1, 2]\n", "flows", "must be a mapping"),
])
def test_engine_config_errors_name_the_key(text, key, words):
    with pytest.raises(ConfigError) as ei:
        loads(text, EngineConfig, source="/etc/vigil/engine.yaml")
    err = ei.value
    assert err.key == key
    assert words in err.problem
    assert str(err).startswith(f"/etc/vigil/engine.yaml: {key}: ")


def test_yaml_syntax_error_gives_line(tmp_path):
    p = tmp_path / "engine.yaml"
    p.write_text("engine_id: e1\nflows: {interval: 1\n")
    with pytest.raises(ConfigError) as ei:
        load(p, EngineConfig)
    assert str(p) in str(ei.value)
    assert "not valid YAML" in str(ei.value)
    assert "line" in str(ei.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.yaml", EngineConfig)
    d = tmp_path / "dir.yaml"
    d.mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load(d, EngineConfig)


def test_top_level_must_be_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        loads("- a\n- b\n", EngineConfig)


def test_manager_config_influx_checks():
    cfg = loads("influx: {url: 'http://127.0.0.1:8086', database: x}\n", ManagerConfig)
    assert cfg.influx.database == "x"
    with pytest.raises(ConfigError) as ei:
        loads("influx: {url: 'localhost:8086'}\n", ManagerConfig)
    assert ei.value.key == "influx.url"
    with pytest.raises(ConfigError) as ei:
        loads("influx: {api: v2}\n", ManagerConfig)
    assert ei.value.key == "influx.bucket"


def test_check_config_cli(tmp_path, capsys):
    from vigil.engine.main import main
    good = tmp_path / "good.yaml"
    good.write_text("engine_id: e7\n")
    assert main(["--check-config", "-c", str(good)]) == 0
    assert '"engine_id": "e7"' in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine_id: e7\nflows: {interval: -1}\n")
    assert main(["--check-config", "-c", str(bad)]) == 2
    assert f"{bad}: flows.interval:" in capsys.readouterr().err
