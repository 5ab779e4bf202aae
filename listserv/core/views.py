"""Frozen snapshots of rows, for pure functions (transforms, notices) that must not touch the DB."""

from __future__ import annotations

from dataclasses import dataclass

from listserv.core import addresses
from listserv.core.models import (
    ArchivePolicy,
    DigestFrequency,
    DmarcMitigation,
    FooterPlacement,
    MailingList,
    ReplyTo,
)


@dataclass(frozen=True)
class ListView:
    id: int
    name: str
    domain: str
    display_name: str
    subject_prefix: str
    reply_to: ReplyTo
    dmarc_mitigation: DmarcMitigation
    archive: ArchivePolicy
    digest_frequency: DigestFrequency
    post_id: int
    dkim_selector: str | None
    dkim_key: str | None
    # Web archive of this list (an https URL) when one is published; without it List-Archive
    # points at the -request address's 'index' command (archive_link).
    archive_url: str | None = None
    # The list's web unsubscribe page (asks for the address, confirms by mail), named in
    # List-Unsubscribe next to the mailto: when the web side is configured.
    unsubscribe_url: str | None = None
    footer_placement: FooterPlacement = FooterPlacement.inline
    description: str = ""
    arc: bool = True            # ARC-seal posts (when the domain has a key)

    @classmethod
    def of(cls, ml: MailingList) -> "ListView":
        return cls(id=ml.id, name=ml.name, domain=ml.domain.name,
                   display_name=ml.display_name or ml.name, subject_prefix=ml.subject_prefix,
                   reply_to=ml.reply_to, dmarc_mitigation=ml.dmarc_mitigation,
                   archive=ml.archive, digest_frequency=ml.digest_frequency, post_id=ml.post_id,
                   dkim_selector=ml.domain.dkim_selector, dkim_key=ml.domain.dkim_private_key,
                   footer_placement=ml.footer_placement, description=ml.description or "",
                   arc=ml.arc)

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"

    @property
    def list_id(self) -> str:
        return f"{self.name}.{self.domain}"

    def sub(self, suffix: str, extra: str | None = None) -> str:
        """An address of this list: sub('request') -> NAME-request@DOMAIN."""
        return addresses.subaddress(self.name, self.domain, suffix, extra)

    @property
    def archive_link(self) -> str | None:
        """The List-Archive target (RFC 2369 allows mailto:), None when not archived."""
        if self.archive is ArchivePolicy.none:
            return None
        return self.archive_url or f"mailto:{self.sub('request')}?subject=index"

    @property
    def bounces(self) -> str:
        return self.sub(addresses.BOUNCES)

    @property
    def owner(self) -> str:
        return self.sub(addresses.OWNER)

    @property
    def prefix(self) -> str:
        """The subject prefix with {list} expanded to the list name (interface.md)."""
        return self.subject_prefix.replace("{list}", self.name)
