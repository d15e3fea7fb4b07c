"""Text stages that need no model: normalisation (normalize.py), and still to come the regex/keyword
blacklist, PII patterns and the external moderation hook client (issues 4 and 7)."""
