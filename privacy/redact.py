"""What of a prompt or completion may be kept, per the policy's retention mode.

`none` keeps nothing but a salted digest, `redacted` (the default) keeps the text with personal data
and secrets masked (filters/pii), `full` keeps it as it was. The same masking applies to anything
the gateway logs.
"""

from __future__ import annotations

from typing import Literal

from filters.pii import redact_pii

RetentionMode = Literal["none", "redacted", "full"]


def retained(text: str, mode: RetentionMode) -> str | None:
    if mode == "none":
        return None
    return text if mode == "full" else redact_pii(text)
