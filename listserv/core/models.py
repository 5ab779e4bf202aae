"""SQLAlchemy 2.0 typed models: the whole schema of listserv.

Every change here needs an Alembic revision under listserv/migrations/versions/; a test checks
that the migrations produce exactly this schema.
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_nonce() -> str:
    """128 random bits, hex: the per-membership secret of unsubscribe tokens."""
    return secrets.token_hex(16)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which drops tzinfo) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[dt.datetime], dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: Optional[dt.datetime], dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Store the values (lower-case words), as a VARCHAR with a CHECK-free definition so that
    # adding a member later needs no ALTER TYPE on PostgreSQL.
    return Enum(cls, values_callable=lambda e: [m.value for m in e], native_enum=False,
                create_constraint=False, length=32, validate_strings=True)


# ---------------------------------------------------------------------------- enums


class Role(enum.Enum):
    member = "member"
    moderator = "moderator"
    owner = "owner"


class DeliveryMode(enum.Enum):
    regular = "regular"
    mime_digest = "mime-digest"
    plain_digest = "plain-digest"
    nomail = "nomail"


DIGEST_MODES = (DeliveryMode.mime_digest, DeliveryMode.plain_digest)


class Action(enum.Enum):
    accept = "accept"
    hold = "hold"
    reject = "reject"
    discard = "discard"


class SenderHeaders(enum.Enum):
    """Which headers name a post's sender for the posting rules."""

    from_ = "from"                   # exactly one From header, its raw addr-spec
    from_sender = "from+sender"      # also Sender: and the envelope sender may stand in


class SubscriptionPolicy(enum.Enum):
    open = "open"
    confirm = "confirm"
    moderate = "moderate"
    confirm_then_moderate = "confirm_then_moderate"


class ReplyTo(enum.Enum):
    list = "list"
    poster = "poster"


class FooterPlacement(enum.Enum):
    inline = "inline"     # in the text bodies (plain and HTML alternatives)
    part = "part"         # in a MIME part of its own unless the post is plain text


class DmarcMitigation(enum.Enum):
    none = "none"
    munge_from = "munge_from"
    wrap = "wrap"


class DigestFrequency(enum.Enum):
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"
    never = "never"


class ArchivePolicy(enum.Enum):
    public = "public"
    private = "private"
    none = "none"


class InboundState(enum.Enum):
    new = "new"              # spooled, not yet processed
    processing = "processing"
    accepted = "accepted"    # a post that was distributed
    held = "held"
    rejected = "rejected"
    discarded = "discarded"
    handled = "handled"      # non-post mail (commands, bounces, owner) done
    failed = "failed"        # parked for a human: processing raised


class Decision(enum.Enum):
    approve = "approve"
    reject = "reject"
    discard = "discard"
    cancel = "cancel"        # withdrawn by the poster
    expire = "expire"        # expired on schedule


class TokenKind(enum.Enum):
    subscribe = "subscribe"              # confirm a subscription (reply from the subscriber)
    unsubscribe = "unsubscribe"          # confirm leaving
    approve_subscription = "approve_subscription"  # owner/moderator approves a join
    moderate = "moderate"                # moderator acts on a held post
    cancel_post = "cancel_post"          # poster withdraws a held post
    reenable = "reenable"                # bounce-disabled member re-enables delivery
    set_delivery = "set_delivery"        # confirm a delivery-mode change asked for by mail


class DeliveryState(enum.Enum):
    pending = "pending"      # ready at next_attempt_at
    sending = "sending"      # leased by lease_owner until lease_expires (then anyone's)
    done = "done"
    failed = "failed"        # permanent failure or gave up


class LogAccess(enum.Enum):
    """Who may read a list's moderation log."""
    public = "public"
    members = "members"
    owners = "owners"


class LogNames(enum.Enum):
    """How moderators are named in a moderation log read by non-moderators."""
    show = "show"
    hide = "hide"


class BounceKind(enum.Enum):
    hard = "hard"            # permanent failure: scores
    soft = "soft"            # temporary failure: counted, does not score by default
    policy = "policy"        # 5.7.x / blocklist / spam refusal: counted apart, never disables
    other = "other"          # auto-reply or unrecognised: recorded and dropped


class JobState(enum.Enum):
    ready = "ready"          # waits for run_after (first run, or a retry after a failure)
    running = "running"      # leased by lease_owner until lease_expires (then anyone's)
    dead = "dead"            # failed max_attempts times: parked for a human (queue failed)
    # a job that succeeds is deleted


# ---------------------------------------------------------------------------- site


class SiteSetting(Base):
    """Key/value store for site-wide state (the site secret)."""

    __tablename__ = "site_setting"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Domain(Base):
    __tablename__ = "domain"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    dkim_selector: Mapped[Optional[str]] = mapped_column(String(63))
    dkim_private_key: Mapped[Optional[str]] = mapped_column(Text)  # PEM
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    lists: Mapped[list["MailingList"]] = relationship(back_populates="domain")


class MailingList(Base):
    __tablename__ = "mailing_list"
    __table_args__ = (UniqueConstraint("name", "domain_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id", ondelete="RESTRICT"))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    # settings (see listserv.core.settings for validation and the CLI names)
    nonmember_action: Mapped[Action] = mapped_column(_enum(Action), default=Action.hold)
    member_action: Mapped[Action] = mapped_column(_enum(Action), default=Action.hold)
    emergency: Mapped[bool] = mapped_column(default=False)
    subscription_policy: Mapped[SubscriptionPolicy] = mapped_column(
        _enum(SubscriptionPolicy), default=SubscriptionPolicy.confirm)
    subject_prefix: Mapped[str] = mapped_column(String(255), default="[{list}] ")
    reply_to: Mapped[ReplyTo] = mapped_column(_enum(ReplyTo), default=ReplyTo.poster)
    max_message_size: Mapped[int] = mapped_column(default=0)
    dmarc_mitigation: Mapped[DmarcMitigation] = mapped_column(
        _enum(DmarcMitigation), default=DmarcMitigation.munge_from)
    digest_frequency: Mapped[DigestFrequency] = mapped_column(
        _enum(DigestFrequency), default=DigestFrequency.daily)
    digest_size_threshold_kb: Mapped[int] = mapped_column(default=30)
    archive: Mapped[ArchivePolicy] = mapped_column(_enum(ArchivePolicy),
                                                   default=ArchivePolicy.private)
    bounce_score_threshold: Mapped[float] = mapped_column(Float, default=5.0)
    bounce_info_stale_after_days: Mapped[int] = mapped_column(default=7)
    bounce_warnings: Mapped[int] = mapped_column(default=3)
    bounce_warning_interval_days: Mapped[int] = mapped_column(default=7)
    notify_poster_on_hold: Mapped[bool] = mapped_column(default=True)
    footer_placement: Mapped[FooterPlacement] = mapped_column(
        _enum(FooterPlacement), default=FooterPlacement.inline)
    administrivia: Mapped[bool] = mapped_column(default=True)
    # ARC-seal posts with the domain's key (only when the domain has one)
    arc: Mapped[bool] = mapped_column(default=True)
    max_recipients: Mapped[int] = mapped_column(default=10)
    advertised: Mapped[bool] = mapped_column(default=True)   # listed in the web directory
    included_members_can_post: Mapped[bool] = mapped_column(default=True)
    moderation_log: Mapped[LogAccess] = mapped_column(_enum(LogAccess),
                                                      default=LogAccess.owners)
    moderation_log_names: Mapped[LogNames] = mapped_column(_enum(LogNames),
                                                           default=LogNames.show)
    automatic_action: Mapped[Action] = mapped_column(_enum(Action), default=Action.hold)
    sender_headers: Mapped[SenderHeaders] = mapped_column(_enum(SenderHeaders),
                                                          default=SenderHeaders.from_)
    sender_post_limit: Mapped[int] = mapped_column(default=10)

    # counters and state
    post_id: Mapped[int] = mapped_column(default=0)
    digest_volume: Mapped[int] = mapped_column(default=1)
    digest_number: Mapped[int] = mapped_column(default=0)   # last issue sent in this volume
    digest_last_sent_at: Mapped[Optional[dt.datetime]] = mapped_column()

    domain: Mapped[Domain] = relationship(back_populates="lists", lazy="joined")

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain.name}"

    @property
    def list_id(self) -> str:
        """RFC 2919 list identifier: NAME.DOMAIN."""
        return f"{self.name}.{self.domain.name}"


class ListInclusion(Base):
    """PARENT's posts also go to CHILD: one of our lists (child_id, expanded to its members,
    recursively) or a list on another server (remote_address, sent one copy like a member).
    Exactly one of child_id and remote_address is set."""

    __tablename__ = "list_inclusion"
    __table_args__ = (
        UniqueConstraint("parent_id", "child_id"),
        UniqueConstraint("parent_id", "remote_address"),
        Index("ix_list_inclusion_child", "child_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    child_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("mailing_list.id", ondelete="CASCADE"))
    remote_address: Mapped[Optional[str]] = mapped_column(String(320))  # normalised
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Address(Base):
    """One email address (a person), shared across lists."""

    __tablename__ = "address"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalised, lower case
    display_name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Membership(Base):
    __tablename__ = "membership"
    __table_args__ = (
        UniqueConstraint("list_id", "address_id", "role"),
        # address_id last: the recipient queries (flat and through includes) are answered
        # from the index alone
        Index("ix_membership_list_role", "list_id", "role", "delivery_mode", "enabled",
              "address_id"),
        Index("ix_membership_address", "address_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    address_id: Mapped[int] = mapped_column(ForeignKey("address.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.member)
    delivery_mode: Mapped[DeliveryMode] = mapped_column(_enum(DeliveryMode),
                                                        default=DeliveryMode.regular)
    moderated: Mapped[bool] = mapped_column(default=False)
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[Optional[str]] = mapped_column(String(32))  # bounce | admin | user
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0)
    last_bounce_at: Mapped[Optional[dt.datetime]] = mapped_column()
    bounce_warnings_sent: Mapped[int] = mapped_column(default=0)
    last_warning_at: Mapped[Optional[dt.datetime]] = mapped_column()
    joined_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Digests: the list's post_id when this member last entered a digest mode; their digest
    # holds the pending posts after it (set by the listener at the end of this module).
    digest_from_seq: Mapped[int] = mapped_column(default=0, server_default="0")
    # Secret per membership row, part of its one-click unsubscribe token (listserv.delivery.unsubscribe):
    # a new row (leave and join again) gets a new one, so old links stop working.
    unsub_nonce: Mapped[str] = mapped_column(String(32), default=new_nonce)

    address: Mapped[Address] = relationship(lazy="joined")
    mailing_list: Mapped[MailingList] = relationship()


class PendingToken(Base):
    """A confirmation or moderation token. Only the SHA-256 of the token is stored."""

    __tablename__ = "pending_token"
    __table_args__ = (Index("ix_pending_token_lookup", "list_id", "kind", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[TokenKind] = mapped_column(_enum(TokenKind))
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))         # the address it was sent to
    held_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("held_message.id", ondelete="CASCADE"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_sent_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[Optional[dt.datetime]] = mapped_column()
    used_by: Mapped[Optional[str]] = mapped_column(String(320))
    outcome: Mapped[Optional[str]] = mapped_column(String(64))


class SenderAction(Base):
    """What happens to posts from a non-member address or address pattern (Mailman's
    accept/hold/reject/discard_these_nonmembers), before the list's nonmember_action.
    A pattern starting with ``^`` is a regular expression matched case-insensitively from the
    start of the address; anything else is one address (stored lower case)."""

    __tablename__ = "sender_action"
    __table_args__ = (UniqueConstraint("list_id", "pattern"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    pattern: Mapped[str] = mapped_column(String(400))
    action: Mapped[Action] = mapped_column(_enum(Action))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Ban(Base):
    """An address or ``^pattern`` banned from a list: its posts are discarded, its
    subscriptions refused."""

    __tablename__ = "ban"
    __table_args__ = (UniqueConstraint("list_id", "pattern"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    pattern: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------------------- intake


class InboundMessage(Base):
    """One message accepted by the intake for one list address. The raw bytes are in the spool.

    A row in state ``new`` has an ``incoming`` job (listserv.pipeline.inbound) that processes it.
    """

    __tablename__ = "inbound_message"
    __table_args__ = (Index("ix_inbound_state", "state", "id"),
                      Index("ix_inbound_sender", "list_id", "from_addr", "received_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    subaddress: Mapped[str] = mapped_column(String(16))   # post|request|join|leave|owner|bounces|confirm
    extra: Mapped[Optional[str]] = mapped_column(String(400))  # VERP recipient or confirm token
    rcpt: Mapped[str] = mapped_column(String(400))        # the envelope recipient as given
    mail_from: Mapped[str] = mapped_column(String(400))   # envelope sender ('' = null reverse-path)
    message_id: Mapped[str] = mapped_column(String(998), default="")
    from_addr: Mapped[str] = mapped_column(String(400), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(default=0)
    spool_sha: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state: Mapped[InboundState] = mapped_column(_enum(InboundState), default=InboundState.new)
    attempts: Mapped[int] = mapped_column(default=0)     # runs of its incoming job
    outcome: Mapped[Optional[str]] = mapped_column(Text)    # reasons / error, for humans
    body_sha: Mapped[Optional[str]] = mapped_column(String(64))  # a post's text (flood rules)

    mailing_list: Mapped[MailingList] = relationship()


class HeldMessage(Base):
    __tablename__ = "held_message"
    __table_args__ = (Index("ix_held_list_open", "list_id", "decision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_message.id", ondelete="CASCADE"),
                                            index=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    sender: Mapped[str] = mapped_column(String(400))
    subject: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(default=0)
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    held_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    decision: Mapped[Optional[Decision]] = mapped_column(_enum(Decision))
    decided_by: Mapped[Optional[str]] = mapped_column(String(400))
    decided_at: Mapped[Optional[dt.datetime]] = mapped_column()
    decided_via: Mapped[Optional[str]] = mapped_column(String(32))  # cli | email | schedule
    reason: Mapped[Optional[str]] = mapped_column(Text)            # reject reason

    inbound: Mapped[InboundMessage] = relationship()
    mailing_list: Mapped[MailingList] = relationship()


class ModerationLog(Base):
    __tablename__ = "moderation_log"
    __table_args__ = (Index("ix_modlog_list", "list_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    held_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("held_message.id", ondelete="SET NULL"), index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(400))
    action: Mapped[str] = mapped_column(String(32))
    via: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class AutoResponse(Base):
    """Rate limit for automatic mail to one address (hold notices, help replies)."""

    __tablename__ = "auto_response"
    __table_args__ = (UniqueConstraint("list_id", "email", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(32))
    day: Mapped[dt.date] = mapped_column()
    count: Mapped[int] = mapped_column(default=0)


# ---------------------------------------------------------------------------- outbound


class OutboundMessage(Base):
    """Final bytes to send (already decorated and signed), in the spool under ``spool_sha``."""

    __tablename__ = "outbound_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("mailing_list.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))   # post | notice | digest | forward
    spool_sha: Mapped[str] = mapped_column(String(64), index=True)
    envelope_from: Mapped[str] = mapped_column(String(400))  # '' = null; base -bounces for VERP
    verp: Mapped[bool] = mapped_column(default=False)
    message_id: Mapped[str] = mapped_column(String(998), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # when the owners were told that the next hop refused the message itself (once per message)
    failure_noticed_at: Mapped[Optional[dt.datetime]] = mapped_column()
    # The spooled bytes are unsigned; each member's copy gets its own one-click unsubscribe
    # headers and DKIM signature at delivery (listserv.delivery.unsubscribe.Personaliser).
    per_member: Mapped[bool] = mapped_column(default=False, server_default=false())


class Delivery(Base):
    """A batch of recipients of one outbound message; the outbound work queue."""

    __tablename__ = "delivery"
    __table_args__ = (Index("ix_delivery_ready", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    outbound_id: Mapped[int] = mapped_column(
        ForeignKey("outbound_message.id", ondelete="CASCADE"), index=True)
    recipients: Mapped[str] = mapped_column(Text)   # newline-separated addresses
    count: Mapped[int] = mapped_column(default=1)
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState),
                                                 default=DeliveryState.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    first_attempt_at: Mapped[Optional[dt.datetime]] = mapped_column()
    # a claim: the worker (listserv.jobs.new_worker_id) and when its lease ends unless renewed
    lease_owner: Mapped[Optional[str]] = mapped_column(String(64))
    lease_expires: Mapped[Optional[dt.datetime]] = mapped_column()
    # positions in ``recipients`` of those delivered under the current claim, as ranges
    # ("0-211,213-250"), recorded as transactions complete: a worker that takes over an
    # expired lease skips them (listserv.queues.Ranges)
    sent: Mapped[Optional[str]] = mapped_column(Text)
    last_code: Mapped[Optional[int]] = mapped_column()
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column()
    # a failed batch: "recipient" (scored as bounces) or "message" (the message or the next
    # hop was refused: nobody scored; see listserv.delivery.post_failures)
    blame: Mapped[Optional[str]] = mapped_column(String(16))

    outbound: Mapped[OutboundMessage] = relationship()


class Fanout(Base):
    """One list's distribution of a post: which lists have distributed a given Message-ID (a
    person on several lists gets one copy), and the durable cursor of its fan-out job
    (listserv.delivery.fanout): recipients are queued in chunks in address id order, each chunk's
    delivery rows in the same transaction as the cursor moving past them."""

    __tablename__ = "fanout"
    __table_args__ = (UniqueConstraint("message_id_hash", "list_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id_hash: Mapped[str] = mapped_column(String(64), index=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    # the message being fanned out (NULL for rows older than staged fan-out, or pruned)
    outbound_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("outbound_message.id", ondelete="SET NULL"))
    # memberships with an id above this were made after the post was accepted: not reached
    members_upto: Mapped[Optional[int]] = mapped_column()
    # the highest address id queued so far (0: none yet)
    after_address_id: Mapped[int] = mapped_column(default=0, server_default="0")
    queued: Mapped[int] = mapped_column(default=0, server_default="0")   # recipients so far
    expanded_at: Mapped[Optional[dt.datetime]] = mapped_column()      # NULL: still expanding


class ArchiveEntry(Base):
    """A post waiting to be archived: the list's archive job (listserv.archive) turns it into
    an ArchiveMessage with its bytes and deletes it in the same transaction."""

    __tablename__ = "archive_entry"
    __table_args__ = (Index("ix_archive_entry_list", "list_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column()              # the list's post_id
    spool_sha: Mapped[str] = mapped_column(String(64), index=True)
    message_id: Mapped[str] = mapped_column(String(998), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ArchiveMessage(Base):
    """One archived post: its month, headers, thread and body text (the index the web archive
    and its search read); its bytes are its ArchiveRaw row.

    The archive job adds both rows in one transaction; ``listserv archive reindex`` recomputes
    these fields from the bytes. The mbox files and HTML pages are exports derived from the
    database. The full-text index over subject, sender and
    body is made by migration 0009 per engine (SQLite: the FTS5 table ``archive_message_fts``
    kept in step by triggers; PostgreSQL: the generated ``tsvector`` column ``fts`` with a GIN
    index) and is not part of these models (see FULLTEXT_OBJECTS).
    """

    __tablename__ = "archive_message"
    __table_args__ = (
        UniqueConstraint("list_id", "message_id"),
        Index("ix_archive_message_month", "list_id", "month", "archived_at"),
        Index("ix_archive_message_date", "list_id", "archived_at"),
        Index("ix_archive_message_thread", "list_id", "thread_id", "archived_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(998))
    month: Mapped[str] = mapped_column(String(7))             # YYYY-MM (its mbox export)
    archived_at: Mapped[dt.datetime] = mapped_column()
    sent_at: Mapped[Optional[dt.datetime]] = mapped_column()  # its Date header
    sender_name: Mapped[str] = mapped_column(String(255), default="")
    sender_address: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    parent_id: Mapped[Optional[str]] = mapped_column(String(998))  # archived message replied to
    thread_id: Mapped[str] = mapped_column(String(998))       # Message-ID of the thread's first
    body: Mapped[str] = mapped_column(Text, default="")       # text (HTML converted), capped
    attachments: Mapped[int] = mapped_column(default=0)


class ArchiveRaw(Base):
    """The bytes of one archived message (LF line ends, as its mbox export holds them), apart
    from its ArchiveMessage row so that the index pages and searches read narrow rows."""

    __tablename__ = "archive_raw"

    message_pk: Mapped[int] = mapped_column(
        ForeignKey("archive_message.id", ondelete="CASCADE"), primary_key=True,
        autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


# Engine-specific full-text objects that only the migrations create (names, by kind).
FULLTEXT_OBJECTS = {
    "table": ("archive_message_fts",),           # SQLite FTS5 and its shadow tables (prefix)
    "column": ("fts",),                          # PostgreSQL tsvector on archive_message
    "index": ("ix_archive_message_fts",),        # PostgreSQL GIN index on it
}


def include_in_comparison(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook: leave the full-text objects out of the comparison of
    the models with the database (they have no model; migration 0009 owns them)."""
    if name is None:
        return True
    if type_ == "table":
        return not name.startswith(FULLTEXT_OBJECTS["table"])
    if type_ == "column":
        return not (name in FULLTEXT_OBJECTS["column"]
                    and parent_names.get("table_name") == "archive_message")
    if type_ == "index":
        return name not in FULLTEXT_OBJECTS["index"]
    return True


# ---------------------------------------------------------------------------- digests


class Digest(Base):
    __tablename__ = "digest"
    __table_args__ = (UniqueConstraint("list_id", "volume", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    volume: Mapped[int] = mapped_column()
    number: Mapped[int] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[Optional[dt.datetime]] = mapped_column()


class DigestEntry(Base):
    __tablename__ = "digest_entry"
    __table_args__ = (Index("ix_digest_entry_pending", "list_id", "digest_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column()
    spool_sha: Mapped[str] = mapped_column(String(64), index=True)  # prepared post (no footer)
    size: Mapped[int] = mapped_column(default=0)
    subject: Mapped[str] = mapped_column(Text, default="")
    sender: Mapped[str] = mapped_column(String(400), default="")
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    digest_id: Mapped[Optional[int]] = mapped_column(ForeignKey("digest.id", ondelete="SET NULL"))
    # recipients.message_hash of the post's Message-ID (as in Fanout): a cross-posted
    # message enters one digest per person (listserv.digests.crosspost)
    message_id_hash: Mapped[Optional[str]] = mapped_column(String(64))


class FinalDigest(Base):
    """One last digest owed to a member who left a digest mode for regular delivery: the
    pending posts with from_seq < seq <= to_seq, which they did not get as regular copies."""

    __tablename__ = "final_digest"

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"),
                                         index=True)
    membership_id: Mapped[int] = mapped_column(ForeignKey("membership.id", ondelete="CASCADE"),
                                               index=True)
    mode: Mapped[DeliveryMode] = mapped_column(_enum(DeliveryMode))
    from_seq: Mapped[int] = mapped_column()
    to_seq: Mapped[int] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------------------- bounces


class BounceEvent(Base):
    __tablename__ = "bounce_event"
    __table_args__ = (Index("ix_bounce_list_email", "list_id", "email", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("mailing_list.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[BounceKind] = mapped_column(_enum(BounceKind))
    source: Mapped[str] = mapped_column(String(16))       # verp | dsn | detector | smtp
    status: Mapped[str] = mapped_column(String(16), default="")   # e.g. 5.1.1
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    inbound_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("inbound_message.id", ondelete="SET NULL"), index=True)
    processed: Mapped[bool] = mapped_column(default=False)


# ---------------------------------------------------------------------------- digest modes
# A delivery-mode change made through the ORM (member set, the 'set delivery' email command)
# records where the member's digest starts, or the one last digest they are owed, so that no
# post is lost or doubled between regular and digest delivery (the hooks are at the end).

class SpoolBlob(Base):
    """Message bytes by SHA-256 (listserv.core.spool), stored once for every row naming the sha
    (inbound_message, outbound_message, digest_entry, archive_entry ``spool_sha``)."""

    __tablename__ = "spool_blob"

    sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column()
    stored_at: Mapped[dt.datetime] = mapped_column()   # written or used again (retention)


class Job(Base):
    """One unit of background work (listserv.jobs). Jobs with the same partition_key run one
    at a time, in id order; at most one *ready* job exists per dedupe_key."""

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_due", "state", "run_after"),
        Index("ix_job_partition", "partition_key", "id"),
        Index("uq_job_dedupe_ready", "dedupe_key", unique=True,
              sqlite_where=text("state = 'ready'"), postgresql_where=text("state = 'ready'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    partition_key: Mapped[Optional[str]] = mapped_column(String(200))
    dedupe_key: Mapped[Optional[str]] = mapped_column(String(200))
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.ready)
    run_after: Mapped[dt.datetime] = mapped_column()
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=5)
    lease_owner: Mapped[Optional[str]] = mapped_column(String(64))
    lease_expires: Mapped[Optional[dt.datetime]] = mapped_column()
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    failed_at: Mapped[Optional[dt.datetime]] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


__all__ = [name for name in dir() if not name.startswith("_")]
