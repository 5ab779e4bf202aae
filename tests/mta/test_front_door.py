"""listserv behind a real Postfix configured from deploy/ as shipped (see conftest.py).

The tests run in file order and share one Postfix and one ``listserv serve``: the first one
tries an address of a list that does not exist yet, the last one creates that list and
checks that Postfix forgets the refusal within a minute (most of that minute is spent by the
tests in between).
"""

from __future__ import annotations

import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import dkim
from email import policy

from tests.mta.conftest import LIST, MEMBERS, MODERATOR, SELECTOR, Front, LIST_DOMAIN
from tests.waiting import wait_until

NEW_LIST = f"new@{LIST_DOMAIN}"
REQUEST = f"dev-request@{LIST_DOMAIN}"
PUBLIC_LIMIT = 10240000          # deploy/postfix/master.cf: the public smtpd's limit
FIRST_REFUSAL: dict[str, float] = {}


def post(frm: str, to: str, subject: str, body: str = "Hello list.\n",
         **headers: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, subject
    m["Date"] = formatdate()
    m["Message-ID"] = make_msgid(domain="client.example")
    for name, value in headers.items():
        m[name.replace("_", "-")] = value
    m.set_content(body)
    return m.as_bytes(policy=policy.SMTP)


def dns_for(front: Front):  # type: ignore[no-untyped-def]
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        if name.decode().rstrip(".") == f"{SELECTOR}._domainkey.{LIST_DOMAIN}":
            return front.txt.encode()
        return None
    return dnsfunc


def test_unknown_list_address_refused_at_rcpt_from_outside_and_mynetworks(front: Front
                                                                         ) -> None:
    for outside in (True, False):
        code, text = front.rcpt(f"nosuch@{LIST_DOMAIN}", outside=outside)
        assert code == 550 and "no such list address" in text, (outside, code, text,
                                                                front.diagnostics())
        code, text = front.rcpt(f"dev-nosuchsub@{LIST_DOMAIN}", outside=outside)
        assert code == 550, (code, text)
        code, _ = front.rcpt(LIST, outside=outside)
        assert code == 250
    # a list that does not exist yet (created by the last test)
    code, _ = front.rcpt(NEW_LIST, outside=True)
    assert code == 550
    FIRST_REFUSAL["t"] = time.monotonic()
    # outside clients may not relay elsewhere (the site's own restriction stays in force)
    code, _ = front.rcpt("someone@elsewhere.example", outside=True)
    assert code in (454, 554)


def test_post_reaches_every_member_signed_with_verp_and_a_dsn_scores_one(front: Front
                                                                         ) -> None:
    data = post("ann@a.example", LIST, "Front door one",
                Authentication_Results="mx.test.example; dkim=pass header.d=forged.example")
    data = data.replace(b"Subject:", b"Authentication-Results: other.example; spf=pass\r\n"
                        b"Subject:", 1)
    assert front.send(LIST, data, "ann@a.example", outside=True) == {}
    reached = [m for m in MEMBERS if m != "gone@gone.example"]

    def all_signed() -> bool:
        got = front.copies("Front door one")
        return set(got) == set(reached) and all(
            dkim.verify(d.data, dnsfunc=dns_for(front)) for d in got.values())
    wait_until(all_signed, 30, "every member's copy, DKIM-verified\n" + front.diagnostics())
    for rcpt, d in front.copies("Front door one").items():
        user, _, host = rcpt.partition("@")
        assert d.mail_from == f"dev-bounces+{user}={host}@{LIST_DOMAIN}"
        assert d.message["List-Id"] is not None
        # sealed once by the list (ARC), with the incoming post's DKIM result (unsigned: none)
        cv, _, why = dkim.arc_verify(d.data, dnsfunc=dns_for(front))
        assert cv == dkim.CV_Pass, why
        ars = [str(v) for v in d.message.get_all("Authentication-Results", [])]
        # the forged one naming our host was dropped by header_checks at the public smtpd
        assert not any("mx.test.example" in v and "forged" in v for v in ars), ars
        assert any(v.startswith("other.example") for v in ars), ars

    # gone.example refused the copy at RCPT: Postfix's DSN came back through Postfix to the
    # VERP address, and listserv scored that member only
    def scored() -> bool:
        rows = {r["email"]: r["score"] for r in front.json("bounces", "ls", LIST)}
        return rows.get("gone@gone.example") == 1
    wait_until(scored, 60, "the DSN for gone@gone.example to be scored\n" + front.diagnostics())
    rows = {r["email"]: r["score"] for r in front.json("bounces", "ls", LIST)}
    assert rows == {"gone@gone.example": 1}


def test_post_just_under_the_public_limit_reaches_every_member(front: Front) -> None:
    line = b"0123456789" * 7 + b"abcdef\r\n"
    head = post("bob@b.example", LIST, "Front door big", "x\n")
    head = head[:head.index(b"\r\n\r\n") + 4]
    end = b"END-OF-BIG-POST\r\n"
    # 600 bytes below the limit: room for the Received: header Postfix adds (~250 bytes)
    filler = line * ((PUBLIC_LIMIT - 600 - len(head) - len(end)) // len(line))
    data = head + filler + end
    assert PUBLIC_LIMIT - 700 < len(data) <= PUBLIC_LIMIT - 600
    too_big = head + filler + line * 20
    with front.client(outside=True) as c:
        code, text = c.mail("bob@b.example", [f"SIZE={len(too_big)}"])
        assert code == 552 and b"5.3.4" in text, (code, text)
    assert front.send(LIST, data, "bob@b.example", outside=True) == {}
    reached = {m for m in MEMBERS if m != "gone@gone.example"}

    def complete() -> bool:
        got = front.copies("Front door big")
        return set(got) == reached and all(b"END-OF-BIG-POST" in d.data[-3000:]
                                           for d in got.values())
    wait_until(complete, 90, "every member's copy of the big post\n" + front.diagnostics())
    assert all(len(d.data) > len(data) for d in front.copies("Front door big").values())
    failed = front.json("queue", "failed")
    assert not [r for r in failed if r["blame"] == "message"], failed
    rows = {r["email"]: r["score"] for r in front.json("bounces", "ls", LIST)}
    assert set(rows) <= {"gone@gone.example"}, rows


def test_moderation_by_reply_through_postfix(front: Front) -> None:
    assert front.send(LIST, post("eve@e.example", LIST, "Front door held"), "eve@e.example",
                      outside=True) == {}

    def notice() -> object:
        return [d for d in front.dumps() if d.rcpts == [MODERATOR]
                and "Front door held" in d.data.decode(errors="replace")]
    wait_until(notice, 30, "the moderator's notice\n" + front.diagnostics())
    n = notice()[0]  # type: ignore[index]
    reply_to = str(n.message["Reply-To"])
    assert reply_to.startswith("dev-confirm+") and reply_to.endswith("@" + LIST_DOMAIN)
    reply = post(MODERATOR, reply_to, "Re: " + str(n.message["Subject"]), "approve\n",
                 In_Reply_To=str(n.message["Message-ID"]))
    assert front.send(reply_to, reply, MODERATOR, outside=True) == {}
    reached = {m for m in MEMBERS if m != "gone@gone.example"}
    wait_until(lambda: reached <= set(front.copies("Front door held")), 30,
               "the approved post at every member\n" + front.diagnostics())


def test_listserv_stopped_postfix_defers_then_delivers(front: Front) -> None:
    front.stop_listserv()
    try:
        # the list address was verified before: Postfix accepts and queues
        assert front.send(LIST, post("cy@c.example", LIST, "Front door deferred"),
                          "cy@c.example", outside=True) == {}
        wait_until(lambda: "status=deferred" in front.postfix.maillog(), 30,
                   "Postfix to defer the LMTP delivery\n" + front.diagnostics())
        assert front.postfix.queue_ids(), "the post is not in Postfix's queue"
        assert not front.copies("Front door deferred")
        # an address never verified before cannot be checked now: 450 (retried by clients),
        # and Postfix caches that failure for a minute only (checked by the last test)
        code, text = front.rcpt(REQUEST, outside=True)
        assert code == 450, (code, text)
        FIRST_REFUSAL["request"] = time.monotonic()
    finally:
        front.serve()
    front.postfix.flush()
    reached = {m for m in MEMBERS if m != "gone@gone.example"}
    wait_until(lambda: reached <= set(front.copies("Front door deferred")), 30,
               "the deferred post at every member after postqueue -f\n" + front.diagnostics())


def test_refusals_are_forgotten_within_a_minute(front: Front) -> None:
    """A list created after its address was refused (550), and an address first tried
    while listserv was down (450), are accepted within a minute."""
    if "t" not in FIRST_REFUSAL:              # run alone: be refused first
        assert front.rcpt(NEW_LIST, outside=True)[0] == 550
        FIRST_REFUSAL["t"] = time.monotonic()
    front.cli("list", "create", NEW_LIST, "--owner", "owner@o.example")
    created = time.monotonic()
    waiting = [NEW_LIST] + ([REQUEST] if "request" in FIRST_REFUSAL else [])

    def accepted() -> bool:
        waiting[:] = [a for a in waiting if front.rcpt(a, outside=True)[0] != 250]
        return not waiting
    wait_until(accepted, 75, "Postfix to accept the new list and -request addresses",
               interval=1.0)
    took = time.monotonic() - created
    assert took < 65, took
