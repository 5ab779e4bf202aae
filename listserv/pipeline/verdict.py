"""A post's verdict: run the posting rules (listserv.pipeline.rules) and carry it out.

accept -> posting.accept_post, hold -> moderation.hold, reject -> posting.reject_post (the
sender is told unless a machine sent it), discard -> the inbound row says why.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage

from sqlalchemy.orm import Session

from listserv.core.app import App
from listserv.core.models import Action, InboundMessage, InboundState, MailingList
from listserv.pipeline import moderation, posting, rules

log = logging.getLogger(__name__)


def handle_post(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage
                ) -> rules.Verdict:
    """Run the rules on a post and carry out the verdict."""
    ml = session.get(MailingList, inbound.list_id)
    assert ml is not None
    # The rules only read: nothing is written before the verdict, so that on SQLite the
    # database's one write lock is not taken (and held) while they run.
    with session.no_autoflush:
        inbound.body_sha = rules.body_digest(msg)
        ctx = rules.build_context(session, ml, inbound, msg)
        verdict = rules.evaluate(ctx)
    if verdict.action is Action.reject and ctx.is_auto:
        # A machine is never sent a refusal: nobody would read it. A person decides instead.
        action = Action.discard if ml.automatic_action is Action.discard else Action.hold
        auto = rules.automatic(ctx)
        verdict = rules.Verdict(action, ((auto.reason,) if auto else ()) + verdict.reasons)
    log.info("list %s message %s: %s %s", ml.list_id, inbound.message_id,
             verdict.action.value, "; ".join(verdict.reasons))
    if verdict.action is Action.accept:
        posting.accept_post(session, app, inbound, msg)
    elif verdict.action is Action.hold:
        moderation.hold(session, app, inbound, list(verdict.reasons))
        inbound.state = InboundState.held
        inbound.outcome = inbound.outcome or "; ".join(verdict.reasons)
    elif verdict.action is Action.discard and verdict.reasons[0].startswith("loop:"):
        log.warning("list %s dropped a looping message %s from %s: %s", ml.list_id,
                    inbound.message_id, inbound.mail_from, verdict.reasons[0])
        inbound.state = InboundState.discarded
        inbound.outcome = "; ".join(verdict.reasons)
    elif verdict.action is Action.reject:
        posting.reject_post(session, app, ml, inbound, msg, list(verdict.reasons), notify=not ctx.is_auto)
    else:
        inbound.state = InboundState.discarded
        inbound.outcome = "; ".join(verdict.reasons)
    return verdict
