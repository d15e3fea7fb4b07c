"""Text stages that need no model: normalisation, regex/keyword blacklist, PII patterns and the
external moderation hook client. Not built yet (issues 4 and 7)."""
