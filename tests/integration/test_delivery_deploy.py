"""deploy/ stays consistent with the configuration format and with itself."""

from __future__ import annotations

import re
from pathlib import Path

from listserv.core import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_example_config_loads_and_matches_postfix() -> None:
    s = config.load(DEPLOY / "listserv.toml", environ={})
    assert s.intake.protocol == "lmtp"
    transport = (DEPLOY / "postfix" / "transport.example").read_text()
    assert f"lmtp:inet:{s.intake.host}:{s.intake.port}" in transport
    assert s.outbound.startswith("smtp://127.0.0.1:")
    port = s.outbound.rsplit(":", 1)[1]
    master = (DEPLOY / "postfix" / "master.cf").read_text()
    assert re.search(rf"^127\.0\.0\.1:{port}\s+inet\b", master, re.M)
    main = (DEPLOY / "postfix" / "main.cf").read_text()
    assert "transport_maps" in main and "relay_domains" in main


def test_systemd_unit_runs_serve_with_the_config() -> None:
    unit = (DEPLOY / "listserv.service").read_text()
    assert re.search(r"^ExecStart=\S+/listserv (-v )?serve$", unit, re.M)
    assert "LISTSERV_CONFIG=/etc/listserv/listserv.toml" in unit
    assert "KillSignal=SIGTERM" in unit


def test_the_split_units_run_one_role_each_with_the_same_config() -> None:
    for role in ("intake", "worker"):
        unit = (DEPLOY / f"listserv-{role}.service").read_text()
        assert re.search(rf"^ExecStart=\S+/listserv (-v )?serve --role {role}$", unit, re.M)
        assert "LISTSERV_CONFIG=/etc/listserv/listserv.toml" in unit
        assert "KillSignal=SIGTERM" in unit
        assert "WorkingDirectory=/var/lib/listserv" in unit


def test_readme_names_every_dns_record() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in ("MX", "v=spf1", "_domainkey", "dkim-keygen", "_dmarc", "v=DMARC1"):
        assert needle in text
