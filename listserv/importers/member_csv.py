"""The columns of member CSV files: ours, and the exports of Google Groups and groups.io.

A header row is recognised by its address column. Other columns are optional: the name, the
role, the delivery (digest) setting and the moderation flag, each under the header names the
services use. Their values are mapped to ours; a value we do not know is a bad line (reported,
never guessed).

Google Groups ("Export members"): ``Email address, Nickname, Group status, Email status,
Email preference, Posting permissions, Join year, ...``; the file may start with a title line
("Members for group ...") before the header.
groups.io (Members → Download): ``Email, Name, Display Name, Username, ..., Email Delivery,
Message Selection, Posting Privilege, ...``.
"""

from __future__ import annotations

from dataclasses import dataclass

from listserv.core.models import DeliveryMode, Role

EMAIL_COLUMNS = ("email", "e-mail", "email address", "email_address", "mail")
# First match wins: a display name beats a user name or nickname.
NAME_COLUMNS = ("name", "display_name", "display name", "full name", "full_name", "nickname")
DELIVERY_COLUMNS = ("email delivery", "email preference", "delivery", "delivery mode",
                    "delivery_mode")
ROLE_COLUMNS = ("group status", "role")
MODERATION_COLUMNS = ("posting permissions", "posting privilege", "moderation",
                      "moderation status", "moderated")
DELIMITERS = (",", ";", "\t")
HEADER_SEARCH_LINES = 5     # a title line or two may precede the header (Google Groups)

DELIVERY_VALUES: dict[str, DeliveryMode] = {
    # ours
    **{m.value: m for m in DeliveryMode},
    # Google Groups "Email preference"
    "all email": DeliveryMode.regular, "email": DeliveryMode.regular,
    "digest": DeliveryMode.mime_digest, "abridged": DeliveryMode.plain_digest,
    "no email": DeliveryMode.nomail, "none": DeliveryMode.nomail,
    # groups.io "Email Delivery"
    "individual messages": DeliveryMode.regular, "individual": DeliveryMode.regular,
    "single": DeliveryMode.regular,
    "full featured digest": DeliveryMode.mime_digest, "plain digest": DeliveryMode.plain_digest,
    "daily summary": DeliveryMode.plain_digest, "summary": DeliveryMode.plain_digest,
    "special notices only": DeliveryMode.nomail, "special": DeliveryMode.nomail,
}
ROLE_VALUES: dict[str, Role] = {
    **{r.value: r for r in Role},
    "manager": Role.moderator,        # Google Groups
    "moderator": Role.moderator,      # groups.io
}
MODERATED_VALUES: dict[str, bool] = {
    "moderated": True, "new user moderated": True, "true": True, "yes": True,
    "allowed": False, "unmoderated": False, "override moderation": False,
    "not moderated": False, "false": False, "no": False, "default": False,
}


@dataclass(frozen=True)
class Columns:
    """Where each known column is in a header row (None: absent)."""

    delimiter: str
    email: int
    name: int | None = None
    delivery: int | None = None
    role: int | None = None
    moderation: int | None = None
    headers: tuple[str, ...] = ()

    def label(self, index: int) -> str:
        return self.headers[index] if index < len(self.headers) else f"column {index + 1}"


def _find(cells: list[str], names: tuple[str, ...]) -> int | None:
    return next((cells.index(n) for n in names if n in cells), None)


def header(line: str) -> Columns | None:
    """The Columns of ``line`` when it is a CSV header row, else None."""
    for delim in DELIMITERS:
        raw = [c.strip().strip('"').strip() for c in line.split(delim)]
        cells = [c.lower() for c in raw]
        email = _find(cells, EMAIL_COLUMNS)
        if email is None or (len(cells) == 1 and cells[0] != "email"):
            continue
        return Columns(delim, email, _find(cells, NAME_COLUMNS), _find(cells, DELIVERY_COLUMNS),
                       _find(cells, ROLE_COLUMNS), _find(cells, MODERATION_COLUMNS),
                       tuple(raw))
    return None


@dataclass(frozen=True)
class Options:
    """The per-row settings a CSV row gives (None: the row does not say)."""

    role: Role | None = None
    delivery: DeliveryMode | None = None
    moderated: bool | None = None


def _cell(cells: list[str], index: int | None) -> str:
    if index is None or index >= len(cells):
        return ""
    return " ".join(cells[index].split()).lower()


def options(cols: Columns, cells: list[str]) -> Options:
    """The row's role, delivery and moderation; ValueError naming the column and value that
    we cannot map."""
    out: dict[str, object] = {}
    for attr, index, table in (("role", cols.role, ROLE_VALUES),
                               ("delivery", cols.delivery, DELIVERY_VALUES),
                               ("moderated", cols.moderation, MODERATED_VALUES)):
        value = _cell(cells, index)
        if not value:
            continue
        if value not in table:
            assert index is not None
            known = ", ".join(sorted(table))
            raise ValueError(f"unknown value {value!r} in column {cols.label(index)!r} "
                             f"(known: {known})")
        out[attr] = table[value]
    return Options(**out)  # type: ignore[arg-type]
