"""The orchestrator's /metrics is plain HTTP without authentication: platform mode keeps it
on loopback unless the operator opts in with orchestrator.metrics_allow_non_loopback."""

import subprocess
import sys

import pytest

from common import config
from common.errors import ConfigError


def load(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.load(path)


def test_platform_mode_binds_metrics_to_loopback_by_default(tmp_path):
    cfg = load(tmp_path, 'mode = "platform"\n')
    host, _ = config.split_address(cfg.orchestrator.metrics_listen)
    assert config.is_loopback(host) and cfg.orchestrator.metrics_allow_non_loopback is False


@pytest.mark.parametrize("listen", ["0.0.0.0:9101", "10.1.2.3:9101", "[::]:9101",
                                    "metrics.example.com:9101"],
                         ids=["wildcard", "lan", "ipv6-wildcard", "hostname"])
def test_platform_mode_refuses_a_non_loopback_metrics_bind_at_start(tmp_path, listen):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f'mode = "platform"\n[orchestrator]\nmetrics_listen = "{listen}"\n')
    assert err.value.code == "CONFIG_INVALID"
    assert err.value.param == "orchestrator.metrics_listen"
    assert "metrics_allow_non_loopback" in err.value.message


@pytest.mark.parametrize("listen", ["127.0.0.1:9101", "[::1]:9101", "localhost:9101"])
def test_platform_mode_accepts_loopback_metrics(tmp_path, listen):
    cfg = load(tmp_path, f'mode = "platform"\n[orchestrator]\nmetrics_listen = "{listen}"\n')
    assert cfg.orchestrator.metrics_listen == listen


def test_the_explicit_opt_in_allows_a_non_loopback_metrics_bind(tmp_path):
    cfg = load(tmp_path, 'mode = "platform"\n[orchestrator]\nmetrics_listen = "0.0.0.0:9101"\n'
                         'metrics_allow_non_loopback = true\n')
    assert cfg.orchestrator.metrics_listen == "0.0.0.0:9101"


def test_lab_mode_is_unchanged(tmp_path):
    cfg = load(tmp_path, 'mode = "lab"\n[orchestrator]\nmetrics_listen = "0.0.0.0:9101"\n')
    assert cfg.orchestrator.metrics_listen == "0.0.0.0:9101"


def test_a_platform_orchestrator_with_exposed_metrics_does_not_start(tmp_path):
    """The real process: exit status 2 and one line naming the setting, before it opens
    the store or binds anything."""
    path = tmp_path / "c.toml"
    path.write_text(f'mode = "platform"\ndata_dir = "{tmp_path / "data"}"\n'
                    '[orchestrator]\nlisten = "127.0.0.1:0"\nmetrics_listen = "0.0.0.0:0"\n')
    out = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "CONFIG_INVALID" in out.stderr and "orchestrator.metrics_listen" in out.stderr
    assert not (tmp_path / "data").exists()
