"""addresses.normalise: the per-domain fast path agrees with full email-validator checks."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email

from listserv.core import addresses
from listserv.core.errors import UsageError

SAMPLES = [
    "a@example.org", "Ann.Smith@Example.ORG", "x+tag@sub.example.co.uk", "o'brien@x.ie",
    "weird!#$%&'*+-/=?^_`{|}~@x.org", "a..b@x.org", ".a@x.org", "a.@x.org", "a@x", "a@-x.org",
    "a@x..org", "a@localhost", "a@x.test", "a@x.invalid", "a@1.2.3.4", "a@[1.2.3.4]",
    "a b@x.org", '"a b"@x.org', "ünï@x.org", "a@bücher.de", "a@xn--bcher-kva.de", "@x.org",
    "a@", "a@b@c.org", "a" * 64 + "@x.org", "a" * 65 + "@x.org", "a@" + "b" * 64 + ".org",
    "a" * 240 + "@example.org", "a@x.org.", "a@x_y.org", "a@example.123",
]


def _full(text: str) -> str | None:
    try:
        r = validate_email(text, check_deliverability=False, allow_smtputf8=True,
                           allow_quoted_local=False, test_environment=True)
    except EmailNotValidError:
        return None
    local, _, domain = r.normalized.rpartition("@")
    return f"{local.lower()}@{domain.lower()}"


@pytest.mark.parametrize("text", SAMPLES)
def test_fast_path_matches_email_validator(text: str) -> None:
    expected = _full(text)
    if expected is None:
        with pytest.raises(UsageError, match="invalid email address"):
            addresses.normalise(text)
    else:
        assert addresses.normalise(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("a@X.org", ("", "a@x.org")),
    ("Ann <Ann@X.org>", ("Ann", "ann@x.org")),
    ('"Smith, Ann" <ann@x.org>', ("Smith, Ann", "ann@x.org")),
    ("<ann@x.org>", ("", "ann@x.org")),
    ('"Q \\"x\\" R" <q@x.org>', ('Q "x" R', "q@x.org")),
])
def test_parse_person(text: str, expected: tuple[str, str]) -> None:
    from listserv.core.members import parse_person

    assert parse_person(text) == expected


@pytest.mark.parametrize("text", ["Ann <>", "Ann <not-an-address>", "<<a@x.org>>"])
def test_parse_person_refuses(text: str) -> None:
    from listserv.core.members import parse_person

    with pytest.raises(UsageError, match="invalid email address"):
        parse_person(text)
