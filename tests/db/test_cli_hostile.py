"""Careless and hostile input at the command line: one stderr line, exit 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from listserv.core.db import Database
from tests.clirun import Cli


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    return Cli(cli_env)


@pytest.mark.parametrize("name", ["a..", "a..b", "dev.", "x" * 250, "x" * 57])
def test_list_names_mail_and_filesystems_cannot_carry_are_refused(cli: Cli, name: str) -> None:
    line = cli.error("list", "create", f"{name}@example.org")
    assert "invalid list name" in line
    assert cli.json("list", "ls") == []


def test_longest_list_name_fits_with_its_suffixes(cli: Cli) -> None:
    name = "x" * 56
    cli("list", "create", f"{name}@example.org")
    assert len(f"{name}-request") == 64
    label = "d" * 63
    long_domain = ".".join([label] * 3) + ".example"        # 200 characters
    line = cli.error("list", "create", f"{name}@{long_domain}")
    assert "longer than 254" in line


@pytest.mark.parametrize("own", ["dev@example.org", "DEV-request@example.org",
                                 "dev-bounces+x=y.org@example.org", "dev-owner@example.org",
                                 "dev-confirm+abc@example.org"])
def test_member_add_of_the_lists_own_addresses_is_refused(cli: Cli, own: str) -> None:
    cli("list", "create", "dev@example.org")
    line = cli.error("member", "add", "dev@example.org", own)
    assert "address of the list dev@example.org itself" in line
    assert cli.json("member", "ls", "dev@example.org") == []
    cli("member", "add", "dev@example.org", "devotee@example.org")   # similar, not the list


def test_config_file_that_is_not_utf8(tmp_path: Path, cli_env: dict[str, str]) -> None:
    conf = tmp_path / "latin1.toml"
    conf.write_bytes('site_domain = "b\xfccher.example"\n'.encode("latin-1"))
    line = Cli(cli_env).error("--config", str(conf), "list", "ls")
    assert "not UTF-8" in line


@pytest.mark.parametrize("key,value", [
    ("LISTSERV_MODERATION_TOKEN_LIFETIME_DAYS", "99999999999"),
    ("LISTSERV_MODERATION_TOKEN_LIFETIME_DAYS", "0"),
    ("LISTSERV_DELIVERY_GIVE_UP_AFTER_DAYS", "1e300"),
    ("LISTSERV_INTAKE_MAX_CONNECTIONS", "0"),
])
def test_day_counts_and_limits_are_bounded(cli_env: dict[str, str], key: str,
                                           value: str) -> None:
    line = Cli(cli_env).error("list", "ls", env={key: value})
    assert key.split("_", 2)[2].lower() in line.replace(".", "_")


def test_database_from_a_newer_listserv(cli: Cli, cli_env: dict[str, str]) -> None:
    db = Database(cli_env["LISTSERV_DATABASE_URL"])
    with db.engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    db.dispose()
    for args in (("list", "ls"), ("db", "upgrade")):
        line = cli.error(*args)
        assert "0099_from_the_future" in line and "newer listserv" in line
