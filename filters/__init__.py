"""Text stages that need no model: normalisation (normalize.py), the multi-pattern blacklist
(blacklist.py), personal data and secrets (pii.py); still to come: the external moderation hook client."""
