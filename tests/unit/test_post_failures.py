"""post_failures.split: which permanent failures are the message's, not the recipient's."""

from listserv.delivery.post_failures import about_message, split


def test_about_message_statuses() -> None:
    assert about_message("552 5.3.4 Message size exceeds fixed limit")
    assert about_message("550 5.7.1 Relay access denied")
    assert about_message("554 5.6.0 content rejected")
    assert not about_message("550 5.1.1 no such user")
    assert not about_message("452 4.3.4 too big for now")
    assert not about_message("550 unknown")


def test_split_rules() -> None:
    lone = [("a@x", 550, "5.1.1 no such user")]
    assert split(["a@x", "b@y"], lone, set()) == (lone, [])
    same = [("a@x", 550, "relay says no"), ("b@y", 550, "relay says no")]
    assert split(["a@x", "b@y"], same, set()) == ([], same)
    # one recipient alone: "the same for everyone" does not apply
    assert split(["a@x"], lone, set()) == (lone, [])
    # a transaction-level reply (DATA) is the next hop's
    assert split(["a@x"], lone, {"a@x"}) == ([], lone)
    big = [("a@x", 552, "5.3.4 too big")]
    assert split(["a@x", "b@y"], big, set()) == ([], big)
    # given-up temporary failures: the connection's are the message's, a mailbox's is its own
    gone = [("a@x", 550, "gave up: 450 4.2.0 greylisted"), ("b@y", 550, "gave up: refused")]
    assert split(["a@x", "b@y", "c@z"], gone, {"b@y"}, {"a@x", "b@y"}) == (
        gone[:1], gone[1:])
