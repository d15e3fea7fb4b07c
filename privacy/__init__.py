"""Audit log (append-only, hash-chained, redacted), retention/erasure and Opacus DP-SGD fine-tuning.
Not built yet (issues 6 and 8)."""
