"""The audit log: one hash-chained record per request and per admin event, committed before the
response completes, stored in SQLite or PostgreSQL, with signed checkpoints, retention and erasure.

record     what a record holds and how it is serialised and hashed
signing    checkpoint signatures (HMAC-SHA256, or Ed25519 with a key file)
store      the SQLite and PostgreSQL backends: schema migrations, chained appends, queries, erasure
writer     group commit off the event loop, the bounded queue and the spill file
verify     walking the chain and the checkpoints; the first broken link, precisely
"""
