"""A daemon whose worker dies stops (and says why) instead of accepting mail nobody processes."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from listserv.core import config
from listserv.core.app import App
from listserv.daemon import Daemon, DeliveryThread, WorkerFailed


def test_a_dead_delivery_worker_stops_the_daemon(settings: config.Settings) -> None:
    # bypasses config validation (which now refuses it) to make the delivery runner die
    broken = config.replace(settings, delivery__outbound="smtp://")
    app = App.from_settings(broken, resolve_txt=lambda name: [])

    async def main() -> None:
        stop = asyncio.Event()
        await asyncio.wait_for(Daemon(app, host="127.0.0.1", port=0).run(stop), 30)

    try:
        with pytest.raises(WorkerFailed, match="smtp://"):
            asyncio.run(main())
    finally:
        app.db.dispose()


@pytest.mark.parametrize("installed", [True, False])
def test_the_delivery_thread_runs_on_uvloop_when_it_is_installed(
        settings: config.Settings, monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    if not installed:
        monkeypatch.setitem(sys.modules, "uvloop", None)     # import uvloop fails
    app = App.from_settings(settings, resolve_txt=lambda name: [])
    seen: list[type] = []

    async def runner(_app: App, stop: asyncio.Event, wake: asyncio.Event) -> None:
        seen.append(type(asyncio.get_running_loop()))
        await asyncio.to_thread(lambda: None)      # its executor works on either loop

    async def main() -> None:
        await asyncio.wait_for(DeliveryThread(app, runner).start(), 30)

    try:
        asyncio.run(main())
    finally:
        app.db.dispose()
    assert len(seen) == 1
    assert (seen[0] is uvloop.Loop) == installed
