"""Links to the web pages, for the mail we send (built from ``[web] base_url``).

Pure functions of the settings: the token pages (listserv.web) are

    BASE_URL/c/TOKEN   a confirmation (join, leave, subscription approval, re-enable,
                       withdrawing one's held post): GET shows it, POST acts
    BASE_URL/m/TOKEN   a moderator's page for one held post
    BASE_URL/u/TOKEN   a member's one-click unsubscribe (listserv.delivery.unsubscribe)

and a public archive's month is BASE_URL/lists/ADDRESS/archive/YYYY-MM/ (listserv.web.archive).
"""

from __future__ import annotations

from urllib.parse import quote

from listserv.core.config import Settings


def base(settings: Settings) -> str:
    return settings.web.base_url.rstrip("/")


def confirm(settings: Settings, token: str) -> str:
    return f"{base(settings)}/c/{token}"


def moderate(settings: Settings, token: str) -> str:
    return f"{base(settings)}/m/{token}"


def unsubscribe(settings: Settings, token: str) -> str:
    return f"{base(settings)}/u/{token}"


def site(settings: Settings) -> str:
    return base(settings) + "/"


def web_on(settings: Settings) -> bool:
    """Whether this site serves its web pages (``[web] listen`` is not empty)."""
    return bool(settings.web.listen)


def archive(settings: Settings, list_address: str) -> str:
    """The web archive of a list (its months), when the archive is public."""
    return f"{base(settings)}/lists/{quote(list_address, safe='@')}/archive/"


def archive_month(settings: Settings, list_address: str, month: str) -> str:
    """The web archive page of one month (YYYY-MM) of a public archive."""
    return f"{archive(settings, list_address)}{month}/"
