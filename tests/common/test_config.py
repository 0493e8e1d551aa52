import pytest

from common import config
from common.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_match_the_architecture():
    cfg = config.load(None)
    assert (cfg.mode, cfg.gateway.listen, cfg.orchestrator.listen, cfg.pool.listen) == (
        "home", "127.0.0.1:8080", "127.0.0.1:9100", "127.0.0.1:9200")
    assert cfg.data_dir.name == "llama-orch"


def test_a_full_file_loads(tmp_path):
    cfg = config.load(write(tmp_path, """
mode = "lab"
data_dir = "/tmp/x"
[pool]
id = "gpu-a"
listen = "0.0.0.0:9200"
heartbeat_ms = 500
[[pool.devices]]
id = "sim-0"
memory_bytes = 8e9
[models.big]
ref = "file:/models/big"
"""))
    assert cfg.pool.devices[0].memory_bytes == 8_000_000_000 and cfg.models["big"].engine == "hf"


@pytest.mark.parametrize("text,param", [
    pytest.param('mode = "cloud"', "mode", id="bad-mode"),
    pytest.param('colour = 1', "colour", id="unknown-key"),
    pytest.param('[pool]\nheartbeat_ms = "fast"', "pool.heartbeat_ms", id="wrong-type"),
    pytest.param('[pool]\nheartbeat_ms = 10', "pool.heartbeat_ms", id="too-small"),
    pytest.param('[gateway]\nlisten = "0.0.0.0:8080"', "gateway.listen", id="home-non-loopback"),
    pytest.param('[gateway]\nlisten = "nope"', "gateway.listen", id="not-host-port"),
    pytest.param('[[pool.devices]]\nid = "a"\n[[pool.devices]]\nid = "a"', "pool.devices", id="dup-devices"),
    pytest.param('[models.x]\nengine = "hf"', "models.x.ref", id="model-without-ref"),
    pytest.param('mode = ', "config", id="not-toml"),
    pytest.param('pool = 3', "pool", id="table-expected"),
    pytest.param('[orchestrator]\ndefault_max_tokens = -1', "orchestrator.default_max_tokens",
                 id="negative-default-max-tokens"),
    pytest.param('[orchestrator]\ndefault_max_tokens = "all"', "orchestrator.default_max_tokens",
                 id="default-max-tokens-not-a-number"),
    pytest.param('[gateway]\ncors_origins = "*"', "gateway.cors_origins", id="cors-not-a-list"),
    pytest.param('[gateway]\ncors_origins = ["http://a.example/"]', "gateway.cors_origins",
                 id="cors-origin-with-a-path"),
])
def test_bad_config_names_the_setting(tmp_path, text, param):
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text))
    assert err.value.code == "CONFIG_INVALID" and err.value.param == param
    assert "\n" not in err.value.message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load(tmp_path / "absent.toml")


def test_moving_the_orchestrator_moves_its_clients(tmp_path):
    cfg = config.load(write(tmp_path, '[orchestrator]\nlisten = "127.0.0.1:19100"'))
    assert cfg.pool.orchestrator == cfg.gateway.orchestrator == "127.0.0.1:19100"
