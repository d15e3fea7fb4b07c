"""What an audit record holds, and how it is serialised and chained.

A record is a JSON object. Its canonical form (sorted keys, no whitespace, UTF-8) is what the chain
hashes: `hash = sha256(prev_hash || "\\n" || canonical)`. Prompt and completion texts are kept out
of the chained object: it carries `sha256(salt || text)` instead, and the text with its salt lives
in a row of its own. Erasing a subject's text removes that row (salt included, so the digest no longer
reveals anything), and the chain still verifies; a text that was edited no longer matches its digest.

A record's `id` is the gateway's own, made for it: nothing a client sends can make two records share
one. The client's request id is a field of the record (`request_id`), as many records may carry it.
Personal data is not kept in the clear outside the texts' retention: the data subject (the OpenAI
`user` field, often an e-mail address) is kept as its HMAC under a key of the gateway's, and a request
id is masked like any free text.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from filters.pii import redact_pii

GENESIS_HASH = "0" * 64
RecordKind = Literal["request", "event"]
TextRole = Literal["prompt", "completion"]


def canonical(body: dict[str, Any]) -> str:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()


def chain_hash(prev_hash: str, canonical_body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{canonical_body}".encode()).hexdigest()


def text_digest(salt: str, text: str) -> str:
    digest = hashlib.sha256(bytes.fromhex(salt))
    digest.update(text.encode())
    return digest.hexdigest()


@dataclass
class RetainedText:
    """A prompt or completion as the retention mode keeps it: `text` is None under mode `none`
    (only the digest of the original is kept, and the salt to check it against a copy)."""

    role: TextRole
    text: str | None
    digest: str
    salt: str
    subject: str | None
    expires_at: float | None


@dataclass
class AuditRecord:
    kind: RecordKind
    body: dict[str, Any]
    texts: list[RetainedText] = field(default_factory=list)
    # What to do if the store cannot take it: "spill" to the local file, or "fail_closed".
    on_store_failure: Literal["spill", "fail_closed"] = "spill"
    # Set when its request stopped waiting (spilled or refused): the writer must not commit it again.
    withdrawn: bool = False

    @property
    def id(self) -> str:
        return self.body["id"]

    def chained_body(self) -> dict[str, Any]:
        """The body with the digests of its texts: what the chain covers."""
        return {**self.body, "texts": {text.role: text.digest for text in self.texts}}

    def content_id(self) -> str:
        """An id derived from what the record holds (its text salts make it unique to it)."""
        return hashlib.sha256(canonical(self.chained_body()).encode()).hexdigest()[:32]

    def take_content_id(self) -> None:
        """For a record spilled before records had ids of their own, whose id (the client's request id)
        another record holds: it becomes its content id, the old one its request id. Derived, not drawn,
        so that a replay tried again gives it the same id and finds it stored."""
        request_id = self.body.get("request_id", stored_request_id(self.id))
        self.body = {**self.body, "id": self.content_id(), "request_id": request_id}

    def to_json(self) -> bytes:
        """For the spill file: everything needed to commit the record later, exactly as it is."""
        return orjson.dumps({"kind": self.kind, "body": self.body, "on_store_failure": self.on_store_failure,
                             "texts": [text.__dict__ for text in self.texts]})

    @classmethod
    def from_json(cls, data: bytes) -> AuditRecord:
        document = orjson.loads(data)
        return cls(document["kind"], document["body"], [RetainedText(**text) for text in document["texts"]],
                   document["on_store_failure"])


class SubjectKey:
    """Turns a data subject into the pseudonym records keep: HMAC-SHA256 under the gateway's subject key.
    Without the key the pseudonym cannot be tried against a list of e-mail addresses; with it, erasure
    finds a subject's texts by computing the same pseudonym."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def pseudonym(self, subject: str) -> str:
        return hmac.new(self.key, subject.encode(), hashlib.sha256).hexdigest()


def stored_request_id(request_id: str) -> str:
    """A client's request id as records keep it, and as a query for it is matched: personal data masked."""
    return redact_pii(request_id)


def new_record(kind: RecordKind, record_id: str | None = None, at: float | None = None, **fields: Any) -> AuditRecord:
    body = {"id": record_id or uuid.uuid4().hex, "kind": kind, "at": round(at if at is not None else time.time(), 6)}
    body.update({name: value for name, value in fields.items() if value is not None})
    return AuditRecord(kind, body)


def retain_text(role: TextRole, original: str, kept: str | None, subject: str | None,
                retention_days: float | None, now: float | None = None) -> RetainedText:
    """`kept` is the text to store (redacted, full, or None for hash-only); the digest covers what
    is stored, or the original when nothing is."""
    salt = os.urandom(16).hex()
    now = time.time() if now is None else now
    if kept is not None:
        # PostgreSQL text cannot hold NUL: kept as U+FFFD on either backend, so that one request's text
        # can never be a record the store refuses (the digest covers the text as stored).
        kept = kept.replace("\x00", "\ufffd")
    return RetainedText(role, kept, text_digest(salt, original if kept is None else kept), salt, subject,
                        None if retention_days is None else now + retention_days * 86400)


def rejection_event(record: AuditRecord, error: str, kept_in: str, host: str) -> AuditRecord:
    """The event chained in the place of a record the store refused: what it was, why, where it is kept.
    Its id derives from the record's, so that a replay retried after a failure chains it once."""
    return new_record("event", record_id=f"{record.id}.rejected", event="audit_record_rejected",
                      request_id=record.body.get("request_id"),
                      rejected={"id": record.id, "kind": record.kind, "at": record.body.get("at")},
                      error=error, dead_letter=kept_in, host=host)
