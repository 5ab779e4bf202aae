"""Compiled templates are shared by the environments of all lists (each list has its own for
its overrides): a packaged template is compiled once per process, an override of its own
source is compiled for itself and renders its own text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest

from listserv.core import templating

NAME = "footer/list.txt.j2"


class _List:
    display_name = "Dev"
    address = "dev@example.org"

    def sub(self, what: str) -> str:
        return f"dev-{what}@example.org"


def test_a_template_is_compiled_once_for_every_lists_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str | None] = []
    real = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: Any, name: str | None = None,
                 *a: Any, **kw: Any) -> Any:
        compiled.append(name)
        return real(self, source, name, *a, **kw)
    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    override = tmp_path / "templates" / "lists" / "c@example.org" / "footer"
    override.mkdir(parents=True)
    (override / "list.txt.j2").write_text("own footer of {{ list.address }}\n")
    texts = [templating.render(str(tmp_path), NAME, {"list": _List()}, domain="example.org",
                               list_address=f"{who}@example.org") for who in "abc"]
    assert texts[0] == texts[1] and "dev-leave@example.org" in texts[0]
    assert texts[2] == "own footer of dev@example.org\n"
    assert compiled.count(NAME) <= 2          # the packaged one (unless cached) and the own
