"""listserv init / db upgrade, configuration errors and an uninitialised database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from listserv.core.db import Database, head_revision
from tests.clirun import Cli


@pytest.fixture
def fresh(tmp_path: Path) -> Cli:
    """A CLI on a data_dir that does not exist yet (SQLite by default)."""
    return Cli({"LISTSERV_DATA_DIR": str(tmp_path / "site")})


def _secret(db_file: Path) -> str:
    engine = create_engine(f"sqlite:///{db_file}")
    with engine.connect() as c:
        value = c.execute(text("select value from site_setting where name='site_secret'")).scalar()
    engine.dispose()
    assert isinstance(value, str)
    return value


def test_init_creates_everything_and_is_idempotent(fresh: Cli, tmp_path: Path) -> None:
    out = fresh("init").stdout
    site = tmp_path / "site"
    assert "initialised" in out and (site / "listserv.db").is_file()
    secret = _secret(site / "listserv.db")
    assert len(secret) >= 32
    fresh("init")
    assert _secret(site / "listserv.db") == secret
    assert "already at" in fresh("db", "upgrade").stdout
    assert fresh.json("domain", "ls") == []


def test_db_upgrade_migrates_an_empty_database(fresh: Cli, tmp_path: Path) -> None:
    out = fresh("db", "upgrade").stdout
    head = head_revision(Database(f"sqlite:///{tmp_path / 'site' / 'listserv.db'}"))
    assert "upgraded" in out and str(head) in out
    assert fresh.json("list", "ls") == []


@pytest.mark.parametrize("argv", [
    ["domain", "ls"], ["list", "ls"], ["list", "create", "a@b.org"], ["member", "ls", "a@b.org"],
])
def test_uninitialised_database_is_one_line(fresh: Cli, argv: list[str]) -> None:
    line = fresh.error(*argv)
    assert "not initialised" in line and "listserv init" in line


def test_missing_config_file(fresh: Cli, tmp_path: Path) -> None:
    line = fresh.error("--config", str(tmp_path / "nope.toml"), "list", "ls")
    assert "not found" in line and "nope.toml" in line
    line = fresh.error("list", "ls", env={"LISTSERV_CONFIG": str(tmp_path / "gone.toml")})
    assert "gone.toml" in line


@pytest.mark.parametrize("content, needle", [
    ("bogus = 1\n", "bogus"),
    ("[intake]\nport = 'x'\n", "intake.port"),
    ("data_dir = \n", "not valid TOML"),
])
def test_bad_config_file_is_one_line(fresh: Cli, tmp_path: Path, content: str,
                                     needle: str) -> None:
    f = tmp_path / "listserv.toml"
    f.write_text(content)
    assert needle in fresh.error("--config", str(f), "init")


def test_bad_environment_override_is_one_line(fresh: Cli) -> None:
    assert "delivery.nope" in fresh.error("init", env={"LISTSERV_DELIVERY_NOPE": "1"})


def test_config_file_is_used(tmp_path: Path) -> None:
    site = tmp_path / "elsewhere"
    f = tmp_path / "listserv.toml"
    f.write_text(f'data_dir = "{site}"\n')
    cli = Cli({})
    cli("--config", str(f), "init")
    assert (site / "listserv.db").is_file()
    cli("--config", str(f), "list", "create", "dev@example.org")
    assert [x["address"] for x in cli.json("--config", str(f), "list", "ls")] == [
        "dev@example.org"]


def test_unreachable_database_is_one_line(fresh: Cli) -> None:
    env = {"LISTSERV_DATABASE_URL": "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"}
    line = fresh.error("list", "ls", env=env)
    assert "cannot open database" in line and "secret" not in line
    assert "cannot open database" in fresh.error("init", env=env)


def test_malformed_command_line_exits_2(fresh: Cli) -> None:
    assert fresh("list", "frobnicate", code=2).exit_code == 2
    assert "Usage" in fresh("member", "add", code=2).stderr
    assert fresh("--nope", code=2).exit_code == 2


def test_every_command_has_help(fresh: Cli) -> None:
    for argv in (["domain"], ["domain", "add"], ["domain", "ls"], ["domain", "dkim-keygen"],
                 ["list"], ["list", "create"], ["list", "ls"], ["list", "show"],
                 ["list", "set"], ["list", "delete"], ["member"], ["member", "add"],
                 ["member", "remove"], ["member", "ls"], ["member", "set"], ["init"],
                 ["db", "upgrade"]):
        out = fresh(*argv, "--help").stdout
        assert "Usage:" in out and len(out.splitlines()) > 3
    assert "notify_poster_on_hold" in fresh("list", "set", "--help").stdout
