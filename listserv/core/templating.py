"""Jinja2 environment: site/domain/list overrides first, then the packaged templates.

A template named ``notice/user/welcome.txt.j2`` is looked up in, in order:
``<data_dir>/templates/lists/<list address>/``, ``<data_dir>/templates/domains/<domain>/``,
``<data_dir>/templates/site/`` and finally the packaged defaults. ``default:NAME`` always names
the packaged template, so an override can ``{% extends "default:NAME" %}``.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.bccache


def package_templates_dir() -> Path:
    """The installed templates (listserv/templates) or, in a source checkout, ./templates."""
    import listserv

    here = Path(listserv.__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("listserv templates directory not found")


def _select_autoescape(name: str | None) -> bool:
    return bool(name) and name.endswith((".html", ".html.j2"))  # type: ignore[union-attr]


class _SharedBytecode(jinja2.BytecodeCache):
    """Compiled templates shared by every environment of the process: each list (and domain)
    has an environment of its own, which would otherwise compile the packaged templates again
    for its first post (a footer: ~1.5 ms). Keyed by template name and file, checked against
    the source's checksum (an edited override is compiled again); all environments are made
    with the same options, so one compiled form serves them all."""

    def __init__(self) -> None:
        self.codes: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with self.lock:
            code = self.codes.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = bucket.bytecode_to_string()
        with self.lock:
            self.codes[bucket.key] = code


_BYTECODE = _SharedBytecode()


@lru_cache(maxsize=256)
def environment(data_dir: str, domain: str | None = None, list_address: str | None = None
                ) -> jinja2.Environment:
    default = jinja2.FileSystemLoader(str(package_templates_dir()))
    site = Path(data_dir) / "templates"
    search: list[str] = []
    if list_address:
        search.append(str(site / "lists" / list_address.lower()))
    if domain:
        search.append(str(site / "domains" / domain.lower()))
    search.append(str(site / "site"))
    loader = jinja2.ChoiceLoader([
        jinja2.PrefixLoader({"default": default}, delimiter=":"),
        jinja2.FileSystemLoader(search),
        default,
    ])
    return jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                              autoescape=_select_autoescape, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True, bytecode_cache=_BYTECODE)


def render(data_dir: str, name: str, context: dict[str, Any], *, domain: str | None = None,
           list_address: str | None = None) -> str:
    return environment(data_dir, domain, list_address).get_template(name).render(**context)
