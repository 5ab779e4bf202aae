from __future__ import annotations

from pathlib import Path

import pytest

from listserv.core import config
from listserv.core.errors import ConfigError


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
    # these used to pass here and then silently kill the delivery worker in `serve`
    ("[delivery]\noutbound = 'smtp://'\n", "delivery.outbound"),
    ("[delivery]\noutbound = 'smtp://127.0.0.1:notaport'\n", "delivery.outbound"),
    ("[delivery]\noutbound = 'smtp://127.0.0.1:99999'\n", "delivery.outbound"),
    ("[delivery]\noutbound = 'maildir:'\n", "delivery.outbound"),
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


def test_env_lists_floats_and_data_dir_expansion() -> None:
    s = config.load(environ={"LISTSERV_DELIVERY_RETRY_SCHEDULE": "30, 60",
                             "LISTSERV_DELIVERY_GIVE_UP_AFTER_DAYS": "2.5",
                             "LISTSERV_MODERATION_TOKEN_LIFETIME_DAYS": "3",
                             "LISTSERV_MODERATION_REQUIRE_AUTHENTICATED_REPLIES": "yes",
                             "LISTSERV_DATA_DIR": "/srv/lists/"})
    assert s.delivery.retry_schedule == (30, 60) and s.delivery.give_up_after_days == 2.5
    assert s.moderation.token_lifetime_days == 3.0
    assert s.moderation.require_authenticated_replies is True
    assert s.database_url == "sqlite:////srv/lists/listserv.db"
    assert s.outbound == "maildir:/srv/lists/outbox"
    assert config.load(environ={"LISTSERV_DELIVERY_RETRY_SCHEDULE": "[5, 10]"}
                       ).delivery.retry_schedule == (5, 10)


def test_env_overrides_file_and_file_overrides_defaults(tmp_path: Path) -> None:
    f = tmp_path / "l.toml"
    f.write_text('[database]\nurl = "postgresql://u:p@db/lists"\n'
                 '[delivery]\noutbound = "smtp://127.0.0.1:10025"\nconnections = 2\n')
    s = config.load(f, environ={"LISTSERV_DELIVERY_CONNECTIONS": "4"})
    assert s.database_url == "postgresql://u:p@db/lists"
    assert s.outbound == "smtp://127.0.0.1:10025" and s.delivery.connections == 4
    assert s.intake.port == 8025  # untouched defaults stay


def test_empty_config_variable_means_defaults() -> None:
    assert config.load(environ={"LISTSERV_CONFIG": ""}).data_dir == "./listserv-data"


@pytest.mark.parametrize("toml, needle", [
    ("database = 'sqlite://'\n", "must be a table"),
    ("[intake]\nport = 0\n", "intake.port"),
    ("[intake]\nport = 70000\n", "intake.port"),
    ("[intake]\nport = true\n", "intake.port"),
    ("[delivery]\nconnections = 0\n", "delivery.connections"),
    ("[delivery]\nmax_recipients_per_transaction = -5\n", "max_recipients_per_transaction"),
    ("[delivery]\nretry_schedule = [60, 0]\n", "delivery.retry_schedule"),
    ("[delivery]\ngive_up_after_days = 'soon'\n", "delivery.give_up_after_days"),
    ("[moderation]\ntrusted_authserv_id = 5\n", "moderation.trusted_authserv_id"),
    ("[database]\nurl = 'mysql://x/y'\n", "database.url"),
    ("[intake.extra]\nx = 1\n", "intake.extra"),
    ("site_domain = \n", "not valid TOML"),
])
def test_more_bad_values_name_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    f = tmp_path / "l.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config.load(f, environ={})


@pytest.mark.parametrize("var, value, needle", [
    ("LISTSERV_DELIVERY_VERP", "perhaps", "delivery.verp"),
    ("LISTSERV_DELIVERY_RETRY_SCHEDULE", "a,b", "delivery.retry_schedule"),
    ("LISTSERV_INTAKE_PROTOCOL", "http", "intake.protocol"),
    ("LISTSERV_DATABASE", "x", "LISTSERV_DATABASE"),
    ("LISTSERV_NOPE", "1", "nope"),
])
def test_more_bad_env_values(var: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config.load(environ={var: value})


def test_unrelated_test_variables_are_ignored() -> None:
    assert config.load(environ={"LISTSERV_TEST_DATABASE_URL": "x"}).data_dir == "./listserv-data"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        config.load(tmp_path, environ={})
