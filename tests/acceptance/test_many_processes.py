"""Three `listserv serve` processes on one PostgreSQL deliver one VERP'd post together; one of
them is killed (kill -9) in the middle: the others take its batches over when their leases
expire, nobody is left out, and what is sent twice is at most the dead process's transactions
on the wire (one per connection)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, insert, select

from listserv.core.app import App
from listserv.core.lists import get_list
from listserv.core.models import Address, Delivery, DeliveryState, Membership
from tests.acceptance.conftest import Site, make_site, message
from tests.conftest import PG_URL
from tests.sink import SmtpSink
from tests.waiting import free_port, wait_until

pytestmark = pytest.mark.skipif(
    not PG_URL, reason="several worker processes sharing one database's leases are a "
                       "PostgreSQL deployment; on SQLite one worker runs (runs in the "
                       "PostgreSQL pass)")

LIST = "many@procs.example"
MEMBERS = 2000
CONNECTIONS = 2
# [database] lease_seconds: the others take the dead process's batches over after this (the
# default is 30 s); each live process renews its leases every third of it
LEASE = 10


@pytest.fixture
def own_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def add_members(site: Site, n: int) -> list[str]:
    emails = [f"m{i}@d{i % 13}.example" for i in range(n)]
    app = App.load(str(site.config))
    try:
        with app.db.unit_of_work() as session:
            list_id = get_list(session, LIST).id
            session.execute(insert(Address), [{"email": e} for e in emails])
            ids = session.scalars(select(Address.id).where(Address.email.in_(emails))).all()
            session.execute(insert(Membership), [{"list_id": list_id, "address_id": a}
                                                 for a in ids])
    finally:
        app.db.dispose()
    return emails


def delivery_counts(app: App) -> dict[str, int]:
    with app.db.unit_of_work() as session:
        rows = session.execute(select(Delivery.state, func.count(func.distinct(
            Delivery.lease_owner)), func.coalesce(func.sum(Delivery.count), 0))
            .group_by(Delivery.state)).all()
    out = {state.value: int(n) for state, _, n in rows}
    out["owners"] = sum(int(o) for state, o, _ in rows if state is DeliveryState.sending)
    return out


def test_three_processes_one_killed(tmp_path: Path, own_sink: SmtpSink) -> None:
    extra = (f"connections = {CONNECTIONS}\nverp = true\n"
             "max_recipients_per_transaction = 50\n")
    for name in "abc":
        (tmp_path / name).mkdir()
    for first in make_site(tmp_path / "a", own_sink, extra, lease_seconds=LEASE):
        first.run("list", "create", LIST, "--owner", "owner@procs.example")
        for key, value in (("nonmember_action", "accept"), ("dmarc_mitigation", "none")):
            first.run("list", "set", LIST, key, value)
        members = add_members(first, MEMBERS)
        sites = [first]
        for name in ("b", "c"):       # the same config and data_dir, its own intake port
            other = Site(tmp_path / name, own_sink, "sqlite://")
            other.port = free_port()
            other.config.write_text(first.config.read_text().replace(
                f"port = {first.port}", f"port = {other.port}"))
            sites.append(other)
        app = App.load(str(first.config))
        try:
            for s in sites:
                s.serve()
            first.send(LIST, message("poster@procs.example", LIST, "three processes"))

            def all_delivering() -> bool:
                c = delivery_counts(app)
                assert c.get("done", 0) < MEMBERS, "delivered before all three took part"
                return c["owners"] >= 3 and c.get("done", 0) >= MEMBERS // 5
            wait_until(all_delivering, 60, "all three processes delivering")
            victim = sites[1]
            victim.kill9()
            done_at_kill = delivery_counts(app).get("done", 0)

            def finished() -> bool:
                for s in (sites[0], sites[2]):
                    assert s.proc is not None and s.proc.poll() is None, s.log.read_text()
                c = delivery_counts(app)
                return c.get("done", 0) >= MEMBERS
            # the dead process's batches wait for its leases to expire (LEASE s)
            wait_until(finished, 120, "the others to finish the dead process's batches")
        finally:
            app.db.dispose()
            for s in sites:
                if s.proc is not None:
                    s.stop()
        got = own_sink.recipients()
        assert done_at_kill < MEMBERS
        assert set(got) == set(members)                 # nobody lost
        duplicates = len(got) - len(set(got))
        print(f"done at the kill: {done_at_kill}, duplicates: {duplicates}")
        assert duplicates <= CONNECTIONS
        taken = [s.log.read_text() for s in (sites[0], sites[2])]
        assert any("took over" in t for t in taken)     # it held batches when it died
