"""listserv web: serve the web pages alone (several web processes behind a reverse proxy)."""

from __future__ import annotations

import click

from listserv.cli.base import Obj, cli, fail, handle_errors, pass_obj
from listserv.core.config import parse_listen


@cli.command("web")
@click.option("--listen", metavar="HOST:PORT", default=None,
              help="Address to listen on (default: [web] listen, 127.0.0.1:8080).")
@pass_obj
@handle_errors
def web_command(obj: Obj, listen: str | None) -> None:
    """Serve the web pages (unsubscribe, confirmations, moderation, directory, archives)
    without the mail intake and workers, until SIGTERM/SIGINT. `listserv serve` serves them
    too; use this to run more web processes, e.g. behind a reverse proxy on other hosts."""
    import asyncio
    import signal

    from listserv.web import server

    app = obj.ready_app()
    listen = app.settings.web.listen if listen is None else listen
    if not listen:
        fail("web.listen is empty (the web part is off): give --listen HOST:PORT")
    parse_listen(listen)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.run(app, stop, listen=listen)

    asyncio.run(main())
