"""The listserv command line: a thin click group over the service modules."""

from listserv.cli.base import Obj, cli, fail, handle_errors, main, pass_obj

__all__ = ["Obj", "cli", "fail", "handle_errors", "main", "pass_obj"]

# Register subcommands (each module adds its commands to ``cli``).
from listserv.cli import admin  # noqa: E402,F401
from listserv.cli import domains  # noqa: E402,F401
from listserv.cli import lists  # noqa: E402,F401
from listserv.cli import network  # noqa: E402,F401
from listserv.cli import members  # noqa: E402,F401
from listserv.cli import serve  # noqa: E402,F401
from listserv.cli import held  # noqa: E402,F401
from listserv.cli import digest  # noqa: E402,F401
from listserv.cli import bounces  # noqa: E402,F401
from listserv.cli import queue  # noqa: E402,F401
from listserv.cli import archive  # noqa: E402,F401
from listserv.cli import senders  # noqa: E402,F401
from listserv.cli import imports  # noqa: E402,F401
from listserv.cli import web  # noqa: E402,F401
