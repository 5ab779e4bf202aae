"""The web side: token pages (one-click unsubscribe, confirmations, moderation), directory and
archives, served by Starlette on uvicorn inside `listserv serve` or alone by `listserv web`."""

from listserv.web.application import create_app

__all__ = ["create_app"]
