from __future__ import annotations

from pathlib import Path

import pytest

from listserv import config
from listserv.errors import ConfigError


def test_defaults_match_interface() -> None:
    s = config.load(environ={})
    assert s.data_dir == "./listserv-data"
    assert s.site_domain == "localhost"
    assert s.database_url == "sqlite:///./listserv-data/listserv.db"
    assert (s.intake.host, s.intake.port, s.intake.protocol) == ("127.0.0.1", 8025, "smtp")
    assert s.intake.max_message_size == 10485760
    assert s.outbound == "maildir:./listserv-data/outbox"
    assert s.delivery.max_recipients_per_transaction == 500
    assert s.delivery.connections == 8 and s.delivery.verp is True
    assert s.delivery.retry_schedule == (60, 300, 900, 3600, 14400)
    assert s.delivery.give_up_after_days == 5
    assert s.moderation.token_lifetime_days == 14
    assert s.moderation.require_authenticated_replies is False
    assert s.moderation.trusted_authserv_id == ""


def test_toml_and_env_override(tmp_path: Path) -> None:
    f = tmp_path / "l.toml"
    f.write_text('data_dir = "/srv/l"\n[intake]\nport = 2525\nprotocol = "lmtp"\n'
                 '[delivery]\nretry_schedule = [1, 2]\n')
    s = config.load(f, environ={"LISTSERV_INTAKE_PORT": "2626", "LISTSERV_DELIVERY_VERP": "off",
                                "LISTSERV_SITE_DOMAIN": "lists.example.org"})
    assert s.data_dir == "/srv/l" and s.intake.port == 2626 and s.intake.protocol == "lmtp"
    assert s.delivery.verp is False and s.delivery.retry_schedule == (1, 2)
    assert s.site_domain == "lists.example.org"
    assert s.database_url == "sqlite:////srv/l/listserv.db"


def test_config_from_environment_variable(tmp_path: Path) -> None:
    f = tmp_path / "l.toml"
    f.write_text('site_domain = "x.org"\n')
    assert config.load(environ={"LISTSERV_CONFIG": str(f)}).site_domain == "x.org"


@pytest.mark.parametrize("toml, key", [
    ("bogus = 1\n", "bogus"),
    ("[intake]\nprot = 'smtp'\n", "intake.prot"),
    ("[intake]\nport = 'x'\n", "intake.port"),
    ("[intake]\nprotocol = 'http'\n", "intake.protocol"),
    ("[delivery]\nverp = 1\n", "delivery.verp"),
    ("[delivery]\nretry_schedule = []\n", "delivery.retry_schedule"),
    ("[delivery]\noutbound = 'ftp://x'\n", "delivery.outbound"),
    ("[nosuch]\nx = 1\n", "nosuch"),
])
def test_bad_keys_and_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    f = tmp_path / "l.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(f, environ={})


def test_bad_env_names_the_key() -> None:
    with pytest.raises(ConfigError, match="delivery.nope"):
        config.load(environ={"LISTSERV_DELIVERY_NOPE": "1"})
    with pytest.raises(ConfigError, match="intake.port"):
        config.load(environ={"LISTSERV_INTAKE_PORT": "seventy"})


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", environ={})
