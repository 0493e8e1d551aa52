"""One `mode` sets every security default (ARCHITECTURE §6); platform mode cannot be weakened."""

import pytest

from common import config
from common.errors import ConfigError


def load(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.load(path)


@pytest.mark.parametrize("mode, tls, auth, audit", [
    ("home", False, False, "off"), ("lab", True, True, "inter-service"),
    ("platform", True, True, "all")])
def test_each_mode_sets_its_defaults(tmp_path, mode, tls, auth, audit):
    cfg = load(tmp_path, f'mode = "{mode}"\n')
    assert (cfg.security.tls, cfg.security.auth, cfg.security.audit) == (tls, auth, audit)
    assert cfg.tenancy is (mode == "platform")


@pytest.mark.parametrize("setting, key", [
    ("[security]\ntls = false", "security.tls"),
    ("[security]\nauth = false", "security.auth"),
    ("[security]\naudit = \"off\"", "security.audit"),
    ("[security]\naudit = \"inter-service\"", "security.audit"),
    ("[scheduler]\npolicy = \"/etc/llama-orch/policy.lua\"", "scheduler.policy")])
def test_every_way_of_weakening_platform_mode_fails_at_start(tmp_path, setting, key):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f'mode = "platform"\n{setting}\n')
    assert err.value.param == key and "platform mode" in err.value.message


def test_lab_may_turn_things_off_explicitly(tmp_path):
    cfg = load(tmp_path, 'mode = "lab"\n[security]\ntls = false\naudit = "off"\n')
    assert cfg.security.tls is False and cfg.security.auth is True and cfg.security.audit == "off"


def test_home_refuses_a_non_loopback_bind_without_the_override(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, '[gateway]\nlisten = "0.0.0.0:8080"\n')
    assert err.value.param == "gateway.listen" and "allow_non_loopback" in err.value.message
    cfg = load(tmp_path, '[gateway]\nlisten = "0.0.0.0:8080"\n[security]\nallow_non_loopback = true\n')
    assert cfg.gateway.listen == "0.0.0.0:8080"


@pytest.mark.parametrize("setting", ['tls = "yes"', 'audit = "some"', 'auth = 1', 'bogus = true'])
def test_bad_security_settings_name_the_setting(tmp_path, setting):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f"[security]\n{setting}\n")
    assert err.value.param.startswith("security.")
