"""Pure message transforms for a post. OWNED BY the decoration work (issue #3); this is the seam.

    prepare(msg, lst, *, resolve_txt) -> EmailMessage
        cleanse, strip inbound DKIM, DMARC mitigation, subject prefix, Reply-To, List-* headers,
        Precedence. Result is what the archive and the digests store.
    decorate(msg, lst, footer) -> EmailMessage
        add the rendered footer MIME-correctly (done at delivery preparation, before signing).
No DB, no clock, no network: DNS comes in as the ``resolve_txt`` function.
"""

from __future__ import annotations

import copy
from email.message import EmailMessage
from typing import Callable

from listserv.views import ListView


def prepare(msg: EmailMessage, lst: ListView, *,
            resolve_txt: Callable[[str], list[str]]) -> EmailMessage:
    out = copy.deepcopy(msg)
    if "List-Id" in out:
        del out["List-Id"]
    out["List-Id"] = f"<{lst.list_id}>"
    return out


def decorate(msg: EmailMessage, lst: ListView, footer: str) -> EmailMessage:
    return msg
