"""Archive access by email (Sympa's INDEX / GET): the -request commands ``index`` and
``get YYYY-MM``.

Who may read: archive=public, anyone; private, the list's members, moderators and owners (the
From address, as for every -request command); none, nobody (a clear line says so). The index
and the month arrive as separate mails, each rate-limited per address per day; a refusal or a
usage error is a line in the ordinary answer to the command mail.

A month that does not fit in one answer, or in what is left of the sender's bytes for the
day, is not cut when the archive is public and this site serves its web pages: the answer
names the month's web archive page instead (nothing is attached, no bytes are counted).
Otherwise the first messages that fit are sent, or nothing once the day's bytes are used.
"""

from __future__ import annotations

from collections import Counter
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from listserv.archive import read as archive_read, store as archive_store
from listserv.core import links, members, ratelimit
from listserv.message import replies
from listserv.core.models import ArchiveMessage, ArchivePolicy
from listserv.delivery.notices import build_notice, send_notice
from listserv.pipeline.subscriptions import Result

if TYPE_CHECKING:
    from listserv.pipeline.commands import Mail

GET_MAX_BYTES = 10 * 1024 * 1024     # the largest mbox attachment one 'get' sends
GET_DAILY_BYTES = 10 * 1024 * 1024   # what 'get' sends one address per list per day, in all
SUBJECTS_PER_MONTH = 100             # subjects listed per month in the index
DAILY_LIMITS = {"archive-index": 5, "archive-get": 5}
GET_USAGE = "Usage: get YYYY-MM (the months are listed by the index command)"


def command(mail: "Mail", word: str, args: list[str]) -> Result:
    """Run ``index`` or ``get YYYY-MM`` for the sender of ``mail``."""
    refusal = _refusal(mail)
    if refusal:
        return Result(refusal)
    if word == "index":
        return _send_index(mail)
    if len(args) != 1 or not archive_read.MONTH_RE.match(args[0]):
        return Result(GET_USAGE, help=True)
    return _send_month(mail, args[0])


def _refusal(mail: "Mail") -> str | None:
    ml, address = mail.ml, mail.ml.address
    if ml.archive is ArchivePolicy.none:
        return f"{address} keeps no archive: there is nothing to send."
    if ml.archive is ArchivePolicy.private \
            and not members.roles_of(mail.session, ml, mail.sender):
        return (f"The archive of {address} is open to its members only, and {mail.sender} "
                "is not one: nothing was sent.")
    return None


def _allowed(mail: "Mail", kind: str) -> bool:
    return ratelimit.allow(mail.session, mail.app, mail.ml.id, mail.sender, kind,
                           limit=DAILY_LIMITS[kind])


def _limited(kind: str) -> Result:
    return Result(f"Daily limit of {DAILY_LIMITS[kind]} {kind.replace('archive-', '')} "
                  f"answers or {GET_DAILY_BYTES // (1024 * 1024)} MB reached: nothing was "
                  "sent, try again tomorrow.", mail_needed=False)


def month_summaries(mail: "Mail") -> list[dict[str, Any]]:
    """Per month: name, message count and its subjects (reply markers and the list prefix
    removed, repeated subjects counted once, at most SUBJECTS_PER_MONTH)."""
    prefix = mail.lv.prefix.strip().lower()
    by_month: dict[str, Counter[str]] = {}
    counts: Counter[str] = Counter()
    for month, subject in mail.session.execute(
            select(ArchiveMessage.month, ArchiveMessage.subject)
            .where(ArchiveMessage.list_id == mail.ml.id)
            .order_by(ArchiveMessage.month, ArchiveMessage.id)):
        by_month.setdefault(month, Counter())[_bare_subject(subject, prefix)] += 1
        counts[month] += 1
    out = []
    for month, subjects in by_month.items():
        listed = list(subjects.items())
        out.append({"month": month, "count": counts[month],
                    "subjects": listed[:SUBJECTS_PER_MONTH],
                    "more": max(0, len(listed) - SUBJECTS_PER_MONTH)})
    return out


def _bare_subject(subject: str, prefix: str) -> str:
    s = subject.strip()
    while True:
        before = s
        s = replies.strip_reply_prefix(s)
        if prefix and s.lower().startswith(prefix):
            s = s[len(prefix):].strip()
        if s == before:
            return s or "(no subject)"


def _reply(mail: "Mail", template: str, context: dict[str, Any]) -> EmailMessage:
    lv = mail.lv
    return build_notice(mail.app, lv, template, mail.sender,
                        {"request_address": lv.sub("request"), **context},
                        in_reply_to=mail.inbound.message_id or None,
                        auto_submitted="auto-replied")


def _send_index(mail: "Mail") -> Result:
    if not _allowed(mail, "archive-index"):
        return _limited("archive-index")
    summaries = month_summaries(mail)
    notice = _reply(mail, "notice/user/archive-index.txt.j2",
                    {"months": summaries, "max_bytes": GET_MAX_BYTES,
                     "web_url": web_archive(mail)})
    send_notice(mail.session, mail.app, mail.lv, notice, [mail.sender])
    return Result(f"The archive index ({len(summaries)} months) was sent.", mail_needed=False)


def web_archive(mail: "Mail") -> str | None:
    """The list's web archive, when anyone may read it there."""
    settings = mail.app.settings
    if mail.ml.archive is not ArchivePolicy.public or not links.web_on(settings):
        return None
    return links.archive(settings, mail.ml.address)


def web_month(mail: "Mail", month: str) -> str | None:
    """The month's page in the web archive, when anyone may read it there."""
    if web_archive(mail) is None:
        return None
    return links.archive_month(mail.app.settings, mail.ml.address, month)


def _send_month(mail: "Mail", month: str) -> Result:
    session, list_id, address = mail.session, mail.ml.id, mail.ml.address
    if month not in archive_store.months(session, list_id):
        return Result(f"The archive of {address} has no messages for {month}. "
                      "The index command lists the months there are.")
    daily_mb = GET_DAILY_BYTES // (1024 * 1024)
    left = GET_DAILY_BYTES - ratelimit.used(mail.session, mail.app, mail.ml.id, mail.sender,
                                            "archive-bytes")
    url = web_month(mail, month)
    if url is not None:
        size = archive_store.month_size(session, list_id, month)
        if size > GET_MAX_BYTES:
            return Result(f"The archive of {month} ({_mb(size)}) is larger than one answer "
                          f"may be ({GET_MAX_BYTES // (1024 * 1024)} MB): nothing was "
                          f"attached. Read it on the web:\n{url}")
        if size > left:
            return Result(f"The archive of {month} ({_mb(size)}) is larger than what is left "
                          f"of today's {daily_mb} MB for {mail.sender}: nothing was attached. "
                          f"Read it on the web:\n{url}")
    if left <= 0 or not _allowed(mail, "archive-get"):
        return _limited("archive-get")
    data, included, total = archive_store.month_mbox(session, list_id, month,
                                                     min(GET_MAX_BYTES, left))
    if not included or not ratelimit.allow(mail.session, mail.app, mail.ml.id, mail.sender,
                                           "archive-bytes", limit=GET_DAILY_BYTES,
                                           amount=len(data)):
        return Result(f"The archive of {month} is larger than what is left of today's "
                      f"{daily_mb} MB for {mail.sender}: nothing was sent, try again "
                      "tomorrow.", mail_needed=True)
    notice = _reply(mail, "notice/user/archive-get.txt.j2", {
        "month": month, "included": included, "total": total, "cut": included < total,
        "max_bytes": GET_MAX_BYTES})
    notice.add_attachment(data, maintype="application", subtype="mbox",
                          filename=f"{mail.ml.name}-{month}.mbox")
    send_notice(mail.session, mail.app, mail.lv, notice, [mail.sender])
    what = f"{included} of {total} messages" if included < total else f"{total} messages"
    return Result(f"The archive of {month} ({what}) was sent.", mail_needed=False)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"
