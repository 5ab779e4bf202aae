"""A daemon whose worker dies stops (and says why) instead of accepting mail nobody processes."""

from __future__ import annotations

import asyncio

import pytest

from listserv.core import config
from listserv.core.app import App
from listserv.daemon import Daemon, WorkerFailed


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
