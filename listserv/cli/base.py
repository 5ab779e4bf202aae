"""The click group every subcommand module adds to, and what they share: the lazily built
App (Obj), one-line error handling, main()."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from typing import Any, Callable, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from listserv import __version__
from listserv.core.app import App
from listserv.core.errors import ListservError

F = TypeVar("F", bound=Callable[..., Any])


class Obj:
    """Lazily built application context shared by subcommands."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App.load(self.config_path)
        return self._app

    def ready_app(self) -> App:
        """The App, with a database that exists and is at the current schema."""
        from listserv.core.db import require_schema

        app = self.app
        require_schema(app.db)
        return app


def fail(message: str, code: int = 1) -> None:
    click.echo(f"listserv: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and exit 1 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ListservError as exc:
            fail(str(exc))
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            first = (str(orig).strip().splitlines() or [type(exc).__name__])[0]
            fail(f"database error: {first}")
        except BrokenPipeError:
            # stdout closed early (`listserv member ls L | head`): stop quietly.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))

    return wrapper  # type: ignore[return-value]


pass_obj = click.make_pass_decorator(Obj)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar="LISTSERV_CONFIG",
              type=click.Path(dir_okay=False), default=None,
              help="TOML configuration file (or $LISTSERV_CONFIG). Defaults are built in.")
@click.option("-v", "--verbose", count=True,
              help="More logging to stderr: -v adds INFO (one line per message handled), "
                   "-vv DEBUG and every SMTP command.")
@click.version_option(__version__, prog_name="listserv")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """listserv: run mailing lists — intake, moderation, signed fan-out, digests, bounces."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:   # aiosmtpd logs every SMTP command at INFO
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    ctx.obj = Obj(config_path)


def main() -> None:
    cli(prog_name="listserv")
