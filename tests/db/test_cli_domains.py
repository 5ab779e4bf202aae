"""listserv domain add / ls / dkim-keygen."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from listserv.message import signing
from listserv.core.app import App
from listserv.core.lists import find_domain
from tests.clirun import Cli


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    return Cli(cli_env)


def _record(out: str) -> tuple[str, str]:
    fields = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(
        ("name:", "value:")))
    return fields["name"].strip(), fields["value"].strip()


def test_add_and_ls(cli: Cli) -> None:
    assert "added domain example.org" in cli("domain", "add", "Example.ORG.").stdout
    cli("domain", "add", "lists.example.net")
    assert cli.json("domain", "ls") == [
        {"domain": "example.org", "dkim_selector": None, "dkim_key": False, "lists": 0},
        {"domain": "lists.example.net", "dkim_selector": None, "dkim_key": False, "lists": 0},
    ]
    lines = cli("domain", "ls").stdout.splitlines()
    assert lines[0].split() == ["DOMAIN", "DKIM", "SELECTOR", "LISTS"]
    assert lines[1].split() == ["example.org", "-", "0"]
    assert lines[1].index("-") == lines[0].index("DKIM")  # aligned columns


def test_add_errors(cli: Cli) -> None:
    cli("domain", "add", "example.org")
    assert "already exists" in cli.error("domain", "add", "EXAMPLE.org")
    assert "invalid domain" in cli.error("domain", "add", "bad_domain!")
    assert "together" in cli.error("domain", "add", "x.org", "--dkim-selector", "s")


def test_dkim_keygen_stores_key_and_prints_record(cli: Cli, app: App) -> None:
    cli("domain", "add", "example.org")
    out = cli("domain", "dkim-keygen", "Example.org", "--selector", "Lists2026").stdout
    name, value = _record(out)
    assert name == "lists2026._domainkey.example.org"
    assert value.startswith("v=DKIM1; k=rsa; p=")
    with app.db.unit_of_work() as s:
        d = find_domain(s, "example.org")
        assert d is not None and d.dkim_selector == "lists2026"
        key = d.dkim_private_key
    assert key is not None
    loaded = serialization.load_pem_private_key(key.encode(), password=None)
    assert loaded.key_size == 2048  # type: ignore[union-attr]
    # The published record verifies a signature made with the stored key.
    msg = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
    signed = signing.sign(msg, "example.org", "lists2026", key)
    txt = {f"{name}.": value.encode()}
    assert dkim.verify(signed, dnsfunc=lambda n, timeout=5: txt.get(n.decode(), b""))
    assert cli.json("domain", "ls")[0]["dkim_selector"] == "lists2026"
    # A second key needs --force.
    assert "--force" in cli.error("domain", "dkim-keygen", "example.org", "--selector", "x")
    _, value2 = _record(cli("domain", "dkim-keygen", "example.org", "--selector", "x",
                            "--force").stdout)
    assert value2 != value


def test_dkim_keygen_errors(cli: Cli) -> None:
    assert "invalid domain" in cli.error("domain", "dkim-keygen", "no pe.org", "--selector", "s")
    cli("domain", "add", "example.org")
    assert "invalid DKIM selector" in cli.error("domain", "dkim-keygen", "example.org",
                                                "--selector", "bad sel")
    cli("domain", "dkim-keygen", "example.org", code=2)  # --selector is required


def test_dkim_keygen_hosts_a_new_domain(cli: Cli) -> None:
    out = cli("domain", "dkim-keygen", "New.Example", "--selector", "s1").stdout
    assert "s1._domainkey.new.example" in out
    rows = json.loads(cli("domain", "ls", "--json").stdout)
    assert [(r["domain"], r["dkim_selector"]) for r in rows] == [("new.example", "s1")]


def test_add_with_key_file(cli: Cli, tmp_path: Path) -> None:
    pem = tmp_path / "k.pem"
    pem.write_text(signing.generate_key())
    out = cli("domain", "add", "example.org", "--dkim-selector", "s1", "--dkim-key",
              str(pem)).stdout
    name, value = _record(out)
    assert name == "s1._domainkey.example.org" and "p=" in value
    assert cli.json("domain", "ls")[0]["dkim_selector"] == "s1"
    # Giving a key to an existing domain replaces it.
    pem2 = tmp_path / "k2.pem"
    pem2.write_text(signing.generate_key())
    assert "updated" in cli("domain", "add", "example.org", "--dkim-selector", "s2",
                            "--dkim-key", str(pem2)).stdout
    assert cli.json("domain", "ls")[0]["dkim_selector"] == "s2"


def test_add_with_bad_key_files(cli: Cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    assert "PEM" in cli.error("domain", "add", "x.org", "--dkim-selector", "s",
                              "--dkim-key", str(junk))
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert "RSA" in cli.error("domain", "add", "x.org", "--dkim-selector", "s",
                              "--dkim-key", str(ec_key))
    binary = tmp_path / "bin.pem"
    binary.write_bytes(base64.b64decode("/+7dzA=="))
    assert "PEM" in cli.error("domain", "add", "x.org", "--dkim-selector", "s",
                              "--dkim-key", str(binary))
    assert "cannot read" in cli.error("domain", "add", "x.org", "--dkim-selector", "s",
                                      "--dkim-key", str(tmp_path / "missing.pem"))
    assert cli.json("domain", "ls") == []


def test_key_is_kept_when_stdout_is_closed(cli: Cli, cli_env: dict[str, str]) -> None:
    """`listserv domain dkim-keygen ... | head -1`: the key is committed before printing, and a
    closed pipe ends the command quietly (no traceback)."""
    import os
    import subprocess
    import sys

    cli("domain", "add", "example.org")
    proc = subprocess.Popen([sys.executable, "-m", "listserv", "domain", "dkim-keygen",
                             "example.org", "--selector", "s1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **cli_env})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and err == ""
    assert cli.json("domain", "ls")[0]["dkim_selector"] == "s1"


def test_dkim_keygen_prints_the_value_in_strings_of_at_most_255(cli: Cli) -> None:
    out = cli("domain", "dkim-keygen", "example.net", "--selector", "s1").stdout
    value = next(line for line in out.splitlines() if line.startswith("value: "))[7:]
    split = out.splitlines()[-1].strip()
    parts = re.findall(r'"([^"]*)"', split)
    assert len(parts) >= 2 and all(len(p) <= 255 for p in parts)
    assert "".join(parts) == value
