"""Membership by email: join, leave and their confirmations (interface.md, "Confirmations").

Policies: open (subscribed at once), confirm (the address confirms by replying), moderate
(owners/moderators approve by replying), confirm_then_moderate (both, in that order). Leaving is
always confirmed by a reply to a token sent to the member. No mail bombing: one outstanding
token per (list, kind, address), re-sent at most once an hour (tokens.issue()).

Each function returns a Result: a line for the person's answer and whether that answer still
needs to be mailed (False when this code already sent them a mail about it, or chose silence).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from listserv.core import links, members, ratelimit, senders, tokens
from listserv.delivery import notices, unsubscribe
from listserv.pipeline import modreply
from listserv.core.app import App, site_secret
from listserv.core.models import (
    Decision,
    DeliveryMode,
    MailingList,
    PendingToken,
    SubscriptionPolicy,
    TokenKind,
)
from listserv.core.views import ListView

log = logging.getLogger(__name__)

CONFIRM_LIMIT_KIND = "confirm"     # ratelimit kind of confirmation requests


@dataclass
class Result:
    text: str
    mail_needed: bool = True
    help: bool = False          # answer with the help text (nothing was done)
    already: bool = False       # the token was used before (answer rate-limited)


def _send(session: Session, app: App, ml: MailingList, to: str, template: str,
          context: dict[str, object], *, reply_to: str | None = None,
          auto_submitted: str = "auto-replied") -> None:
    lv = ListView.of(ml)
    msg = notices.build_notice(app, lv, template, to, dict(context), reply_to=reply_to,
                               auto_submitted=auto_submitted)
    notices.send_notice(session, app, lv, msg, [to])


def _may_confirm(session: Session, app: App, ml: MailingList, email: str) -> bool:
    """Whether ``email`` may get another confirmation request from ``ml`` today: anyone can
    ask for one in a stranger's name (a forged join), so they are counted like other notices
    to outside addresses, across kinds, on top of the hourly re-send interval."""
    return (ratelimit.used(session, app, ml.id, email, CONFIRM_LIMIT_KIND)
            < ratelimit.DAILY_LIMITS[CONFIRM_LIMIT_KIND])


def _confirm_limited(ml: MailingList, email: str) -> Result:
    return Result(f"{email} got today's {ratelimit.DAILY_LIMITS[CONFIRM_LIMIT_KIND]} "
                  f"confirmation requests from {ml.address}: nothing was sent, try again "
                  "tomorrow.", mail_needed=False)


def _send_confirmation(session: Session, app: App, ml: MailingList, to: str, template: str,
                       token: str, context: dict[str, object]) -> None:
    """A confirmation request to ``to`` (counted against its daily limit)."""
    ratelimit.allow(session, app, ml.id, to, CONFIRM_LIMIT_KIND)
    _send_token(session, app, ml, to, template, token, context)


def _send_token(session: Session, app: App, ml: MailingList, to: str, template: str,
                token: str, context: dict[str, object]) -> None:
    confirm = ListView.of(ml).sub("confirm", token)
    _send(session, app, ml, to, template, {"token": token, "confirm_address": confirm,
                                           "confirm_url": links.confirm(app.settings, token),
                                           **context}, reply_to=confirm)


# ---------------------------------------------------------------------------- join


def join(session: Session, app: App, ml: MailingList, email: str,
         display_name: str = "", *, always_confirm: bool = False) -> Result:
    """Join by the list's policy. ``always_confirm`` (the web form, where anyone can type
    any address): the address confirms first whatever the policy, then the moderators
    approve when the policy asks for them."""
    if members.find_membership(session, ml, email) is not None:
        return Result(f"{email} is already subscribed to {ml.address}.")
    if senders.banned(session, ml, email):
        log.info("list_id=%s refused the subscription of banned %s", ml.list_id, email)
        return Result(f"{email} may not subscribe to {ml.address}.")
    policy = ml.subscription_policy
    moderated = (SubscriptionPolicy.moderate, SubscriptionPolicy.confirm_then_moderate)
    if policy is SubscriptionPolicy.open and not always_confirm:
        return subscribe_now(session, app, ml, email, display_name)
    if policy is SubscriptionPolicy.moderate and not always_confirm:
        return ask_moderators(session, app, ml, email, display_name)
    then = "moderate" if policy in moderated else ""
    if not _may_confirm(session, app, ml, email):
        return _confirm_limited(ml, email)
    issued = tokens.issue(session, app, TokenKind.subscribe, ml, email,
                          payload={"display_name": display_name, "then": then})
    if issued.token is None:
        # Answered (within the daily limit of answers), so that a person who does not see the
        # confirmation knows where to look; never a second confirmation within the hour.
        sent = issued.row.last_sent_at.strftime("%Y-%m-%d %H:%M UTC")
        return Result(f"A confirmation request was already sent to {email} at {sent}. "
                      "Please check your spam or junk folder for it and reply to it; a new one "
                      "can be sent an hour after the last.")
    _send_confirmation(session, app, ml, email, "notice/user/confirm-subscribe.txt.j2",
                       issued.token, {"email": email, "expires_at": issued.row.expires_at})
    return Result(f"A confirmation request has been sent to {email}.", mail_needed=False)


def subscribe_now(session: Session, app: App, ml: MailingList, email: str,
                  display_name: str = "") -> Result:
    if members.find_membership(session, ml, email) is not None:
        return Result(f"{email} is already subscribed to {ml.address}.")
    if senders.banned(session, ml, email):       # banned after the request was made
        return Result(f"{email} may not subscribe to {ml.address}.")
    m = members.add_member(session, ml, email, display_name=display_name)
    session.flush()
    token = unsubscribe.make_token(site_secret(session), m.id, m.unsub_nonce)
    _send(session, app, ml, email, "notice/user/welcome.txt.j2", {
        "email": email, "unsubscribe_url": links.unsubscribe(app.settings, token)},
        auto_submitted="auto-generated")
    log.info("list_id=%s subscribed %s", ml.list_id, email)
    return Result(f"{email} is now subscribed to {ml.address}.", mail_needed=False)


def ask_moderators(session: Session, app: App, ml: MailingList, email: str,
                   display_name: str = "") -> Result:
    """One approval token per moderator/owner (re-sent at most hourly), and one note to the
    person the first time."""
    moderators = members.moderators_and_owners(session, ml)
    if not moderators:
        log.warning("list_id=%s: subscription of %s needs approval but the list has no "
                    "moderator or owner", ml.list_id, email)
    first_time = True
    for mod in moderators:
        issued = tokens.issue(session, app, TokenKind.approve_subscription, ml, mod,
                              payload={"subscriber": email, "display_name": display_name},
                              match={"subscriber": email})
        if issued.reissued or issued.token is None:
            first_time = False
        if issued.token is not None:
            _send_token(session, app, ml, mod, "notice/moderator/subscription.txt.j2",
                        issued.token, {"subscriber": email, "display_name": display_name,
                                       "expires_at": issued.row.expires_at})
    if first_time:
        _send(session, app, ml, email, "notice/user/subscription-pending.txt.j2",
              {"email": email})
        return Result(f"Your subscription to {ml.address} awaits the moderators' approval.",
                      mail_needed=False)
    return Result(f"Your subscription to {ml.address} is already awaiting approval.",
                  mail_needed=False)


# ---------------------------------------------------------------------------- leave


def leave(session: Session, app: App, ml: MailingList, email: str) -> Result:
    if members.find_membership(session, ml, email) is None:
        return Result(f"{email} is not subscribed to {ml.address}.")
    if not _may_confirm(session, app, ml, email):
        return _confirm_limited(ml, email)
    issued = tokens.issue(session, app, TokenKind.unsubscribe, ml, email)
    if issued.token is None:
        return Result(f"A confirmation request was sent to {email} less than an hour ago: "
                      "reply to it.", mail_needed=False)
    _send_confirmation(session, app, ml, email, "notice/user/confirm-unsubscribe.txt.j2",
                       issued.token, {"email": email, "expires_at": issued.row.expires_at})
    return Result(f"A confirmation request has been sent to {email}.", mail_needed=False)


def unsubscribe_now(session: Session, app: App, ml: MailingList, email: str) -> Result:
    m = members.find_membership(session, ml, email)
    if m is None:
        return Result(f"{email} is not subscribed to {ml.address}.")
    session.delete(m)
    session.flush()
    _send(session, app, ml, email, "notice/user/goodbye.txt.j2", {
        "email": email, "site_url": links.site(app.settings)}, auto_submitted="auto-generated")
    log.info("list_id=%s unsubscribed %s", ml.list_id, email)
    return Result(f"{email} has left {ml.address}.", mail_needed=False)


# ---------------------------------------------------------------------------- settings


def set_delivery(session: Session, app: App, ml: MailingList, email: str, value: str, *,
                 confirmed: bool = False) -> Result:
    """A delivery-mode change asked for by mail. A From header is easily forged (a forged
    'set delivery nomail' would silence a member), so unless ``confirmed`` (a DKIM-verified
    sender) it is confirmed by reply first, as 'unsubscribe' is."""
    try:
        mode = DeliveryMode(value.strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in DeliveryMode)
        return Result(f"Unknown delivery mode {value!r}: use one of {choices}.")
    m = members.find_membership(session, ml, email)
    if m is None:
        return Result(f"{email} is not subscribed to {ml.address}.")
    if m.delivery_mode is mode:
        return Result(f"Delivery for {email} is already {mode.value}.")
    if confirmed:
        members.change_delivery_mode(session, m, mode, app.now())
        return Result(f"Delivery for {email} is now {mode.value}.")
    if not _may_confirm(session, app, ml, email):
        return _confirm_limited(ml, email)
    issued = tokens.issue(session, app, TokenKind.set_delivery, ml, email,
                          payload={"mode": mode.value}, match={"mode": mode.value})
    if issued.token is None:
        return Result(f"A confirmation request was sent to {email} less than an hour ago: "
                      "reply to it.", mail_needed=False)
    _send_confirmation(session, app, ml, email, "notice/user/confirm-delivery.txt.j2",
                       issued.token, {"email": email, "mode": mode.value,
                                      "expires_at": issued.row.expires_at})
    return Result(f"A confirmation request has been sent to {email}.", mail_needed=False)


# ---------------------------------------------------------------------------- confirmations

CONFIRM_KINDS = (TokenKind.subscribe, TokenKind.unsubscribe, TokenKind.approve_subscription,
                 TokenKind.reenable, TokenKind.set_delivery)


def confirm(session: Session, app: App, ml: MailingList, row: PendingToken, replier: str,
            lines: list[str], *, via: str = "email", subject: str = "") -> Result:
    """Act on a valid, open token of a confirmation kind (the caller checked the list, the
    replier, expiry and use). ``via``: email (a reply) or web (its page). ``lines``: what
    the replier typed (replies.command_lines), ``subject`` that of the reply."""
    payload = row.payload or {}
    if row.kind is TokenKind.approve_subscription:
        return _moderate_subscription(session, app, ml, row, replier, lines, via, subject)
    if not tokens.consume(session, app, row, by=replier, outcome="confirmed"):
        return Result(f"This request was already handled by {row.used_by}.", already=True)
    if row.kind is TokenKind.subscribe:
        dn = str(payload.get("display_name") or "")
        if payload.get("then") == "moderate":
            return ask_moderators(session, app, ml, row.email, dn)
        return subscribe_now(session, app, ml, row.email, dn)
    if row.kind is TokenKind.unsubscribe:
        return unsubscribe_now(session, app, ml, row.email)
    if row.kind is TokenKind.set_delivery:
        return set_delivery(session, app, ml, row.email, str(payload.get("mode") or ""),
                            confirmed=True)
    if row.kind is TokenKind.reenable:
        from listserv.bounces import process as bounces

        text = bounces.reenable_token(session, app, row, via=via)
        return Result(text[:1].upper() + text[1:] + ".")
    return Result("This token cannot be confirmed here.")


def _close_approvals(session: Session, app: App, ml: MailingList, subscriber: str,
                     by: str, outcome: str) -> None:
    rows = session.scalars(select(PendingToken).where(
        PendingToken.list_id == ml.id, PendingToken.kind == TokenKind.approve_subscription,
        PendingToken.used_at.is_(None))).all()
    ids = [r.id for r in rows if (r.payload or {}).get("subscriber") == subscriber]
    if ids:
        session.execute(update(PendingToken).where(
            PendingToken.id.in_(ids), PendingToken.used_at.is_(None)
        ).values(used_at=app.now(), used_by=by, outcome=outcome)
            .execution_options(synchronize_session=False))


def _moderate_subscription(session: Session, app: App, ml: MailingList, row: PendingToken,
                           replier: str, lines: list[str], via: str = "email",
                           subject: str = "") -> Result:
    from listserv.pipeline.moderation import write_log

    subscriber = str((row.payload or {}).get("subscriber") or "")
    # The moderation grammar: "Rejected: not a member of staff", "Decline - sorry", "delete";
    # a reply without a refusal approves (no command word is needed).
    reply = modreply.parse("\n".join(lines), subject=subject)
    deny = reply.decision in (Decision.reject, Decision.discard)
    word = "reject" if reply.decision is Decision.reject else "discard"
    outcome = word if deny else "approve"
    if not tokens.consume(session, app, row, by=replier, outcome=outcome):
        return Result(f"This request was already handled by {row.used_by}.", already=True)
    _close_approvals(session, app, ml, subscriber, replier, outcome)
    write_log(session, app, ml.id, None, actor=replier, action=f"{outcome}_subscription",
              via=via, detail=subscriber)
    if deny:
        if word == "reject":
            _send(session, app, ml, subscriber, "notice/user/subscription-refused.txt.j2",
                  {"email": subscriber, "reason": reply.reason})
        return Result(f"The subscription of {subscriber} to {ml.address} was "
                      f"{'rejected' if word == 'reject' else 'discarded'}.")
    dn = str((row.payload or {}).get("display_name") or "")
    subscribe_now(session, app, ml, subscriber, dn)
    return Result(f"The subscription of {subscriber} to {ml.address} was approved.")
