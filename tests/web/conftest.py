"""Web fixtures: a Starlette test client over the application (``web``), and for the browser
tests a real `listserv serve` (``live``) driven by Debian's chromium (``browser``)."""

from __future__ import annotations

from typing import Iterator

import pytest
from starlette.testclient import TestClient

from listserv.app import App
from listserv.web import create_app
from tests.integration.harness import sink  # noqa: F401

BASE_URL = "http://testserver"


@pytest.fixture
def web(app: App) -> Iterator[TestClient]:
    """The pages of ``app`` through Starlette's test client (base_url http://testserver)."""
    with TestClient(create_app(app, base_url=BASE_URL), base_url=BASE_URL,
                    raise_server_exceptions=False, follow_redirects=False) as client:
        yield client
