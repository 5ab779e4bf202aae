"""listserv domain add / ls / dkim-keygen."""

from __future__ import annotations

from pathlib import Path

import click

from listserv.admin import domains as service
from listserv.cli.base import Obj, cli, handle_errors, pass_obj
from listserv.cli.output import json_array, table
from listserv.core.errors import UsageError
from listserv.core.models import Domain


@cli.group("domain")
def domain_group() -> None:
    """Hosted domains and their DKIM keys."""


def _record_lines(d: Domain) -> list[str]:
    name, value = service.txt_record(d)
    split = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return [f"Publish this DNS TXT record for {d.name}:", f"name:  {name}", "type:  TXT",
            f"value: {value}",
            "value as strings of at most 255 characters (for DNS panels and zone files that "
            "need them):", f"       {split}"]


@domain_group.command("add")
@click.argument("domain")
@click.option("--dkim-selector", "selector", metavar="SEL",
              help="DKIM selector for the key (with --dkim-key).")
@click.option("--dkim-key", "key_file", metavar="PEM_FILE",
              help="RSA private key (PEM) that signs all mail of this domain's lists.")
@pass_obj
@handle_errors
def domain_add(obj: Obj, domain: str, selector: str | None, key_file: str | None) -> None:
    """Host DOMAIN. With --dkim-selector and --dkim-key, all its list mail is DKIM-signed.

    Adding a key to a domain that already exists replaces its key.
    """
    pem = None
    if key_file is not None:
        try:
            pem = Path(key_file).read_text(encoding="ascii")
        except UnicodeDecodeError:
            raise UsageError(f"{key_file}: not a PEM file") from None
        except OSError as exc:
            raise UsageError(f"cannot read {key_file}: {exc.strerror or exc}") from None
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        d, created = service.add_domain(session, domain, dkim_selector=selector,
                                        dkim_key_pem=pem)
        lines = [f"{'added' if created else 'updated'} domain {d.name}"
                 + (f" (DKIM selector {d.dkim_selector})" if d.dkim_private_key else "")]
        if d.dkim_private_key:
            lines += _record_lines(d)
    click.echo("\n".join(lines))  # after the commit


@domain_group.command("dkim-keygen")
@click.argument("domain")
@click.option("--selector", required=True, metavar="SEL", help="DKIM selector, e.g. 'lists'.")
@click.option("--force", is_flag=True, help="Replace an existing key.")
@pass_obj
@handle_errors
def domain_dkim_keygen(obj: Obj, domain: str, selector: str, force: bool) -> None:
    """Make and store a new RSA-2048 DKIM key for DOMAIN; print the DNS TXT record to publish.

    The record is named SEL._domainkey.DOMAIN. An existing key is only replaced with --force.
    """
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        d = service.generate_dkim_key(session, domain, selector, replace=force)
        lines = _record_lines(d)
    click.echo("\n".join(lines))  # after the commit


@domain_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_obj
@handle_errors
def domain_ls(obj: Obj, as_json: bool) -> None:
    """List hosted domains (JSON keys: domain, dkim_selector, dkim_key, lists)."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        infos = service.list_domains(session)
    if as_json:
        json_array(i.as_json() for i in infos)
        return
    table(["domain", "dkim selector", "lists"],
          [(i.domain, i.dkim_selector if i.has_key else None, i.lists) for i in infos],
          empty="no domains")
