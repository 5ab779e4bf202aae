"""Printing helpers for the CLI: aligned tables for people, JSON arrays for programs."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import click


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "") -> None:
    """Print rows as columns aligned under upper-case headers (the last column unpadded)."""
    text_rows = [[cell(v) for v in row] for row in rows]
    if not text_rows:
        if empty:
            click.echo(empty)
        return
    heads = [h.upper() for h in headers]
    widths = [max(len(heads[i]), *(len(r[i]) for r in text_rows)) for i in range(len(heads))]
    for row in [heads, *text_rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def pairs(items: Iterable[tuple[str, Any]]) -> None:
    """Print key/value lines with the values aligned."""
    items = list(items)
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        click.echo(f"{(key + ':').ljust(width + 1)} {cell(value)}".rstrip())


def json_array(objects: Iterable[dict[str, Any]], batch: int = 1000) -> None:
    """Print a JSON array with one object per line, written in batches (a 100,000-member list
    is streamed, never held whole)."""
    encode = json.JSONEncoder(ensure_ascii=False).encode
    pending: list[str] = []
    count = 0
    for obj in objects:
        pending.append(encode(obj))
        count += 1
        if len(pending) >= batch:
            click.echo(("[\n" if count == len(pending) else ",\n") + ",\n".join(pending),
                       nl=False)
            pending = []
    if pending:
        click.echo(("[\n" if count == len(pending) else ",\n") + ",\n".join(pending),
                   nl=False)
    click.echo("\n]" if count else "[]")


def json_object(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2))
