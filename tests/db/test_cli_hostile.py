"""Careless and hostile input at the command line: one stderr line, exit 1, never a traceback."""

from __future__ import annotations

import pytest

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
