"""Text stages that need no model: normalisation (normalize.py), the multi-pattern blacklist
(blacklist.py), and still to come PII patterns and the external moderation hook client."""
