"""Run the web application with uvicorn inside an existing asyncio event loop.

`listserv serve` runs it next to the intake and the workers (one loop, one process);
`listserv web` runs it alone. We bind the socket ourselves (clear error on a busy port, port 0
for tests) and stop uvicorn through ``should_exit`` when the daemon's stop event fires: the
daemon owns SIGTERM/SIGINT, so uvicorn's own signal capture is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Callable, Iterator

import uvicorn

from listserv.core.app import App
from listserv.core.config import parse_listen
from listserv.core.errors import ConfigError

log = logging.getLogger(__name__)

GRACEFUL_TIMEOUT = 5


class EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handlers of its own (the daemon's stop event stops it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"web.listen {listen!r}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"web.listen {listen!r}: cannot listen: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def make_server(app: App) -> EmbeddedServer:
    from listserv.web import create_app

    # ws="none": the pages use no WebSockets, and "auto" imports a WebSocket library (≈3 MB)
    config = uvicorn.Config(create_app(app), lifespan="off", log_level=logging.WARNING,
                            access_log=False, server_header=False, ws="none",
                            timeout_graceful_shutdown=GRACEFUL_TIMEOUT)
    return EmbeddedServer(config)


async def run(app: App, stop: asyncio.Event, *, listen: str | None = None,
              on_listening: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set (then finish the requests in flight, bounded)."""
    listen = app.settings.web.listen if listen is None else listen
    sock = bind(listen)
    port = int(sock.getsockname()[1])
    server = make_server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()                     # raises what stopped it
            raise ConfigError(f"web.listen {listen!r}: the web server did not start")
        log.info("listserv: web pages on http://%s (links in mail: %s)",
                 _show(sock.getsockname()), app.settings.web.base_url)
        if on_listening is not None:
            on_listening(port)
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()


def _show(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
