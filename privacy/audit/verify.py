"""`wardgate audit verify`: walk the chain and its checkpoints, and name the first broken link.

What each check catches:
- a record's hash does not match its content: the record was edited;
- a record's prev_hash is not the hash before it, or a sequence number is missing: a record was
  removed, inserted or moved (rows swapped);
- an indexed column disagrees with the chained body: the column was edited to mislead queries;
- a stored text does not match the digest the chain holds for it: the text was edited;
- a checkpoint's signature does not verify, or names a hash the chain no longer has: the chain was
  rewritten from some point on, hashes recomputed (a checkpoint signed with a key not given is
  noted, its hash still checked: give every key in use since the log began, old ones included);
- the chain ends before the last checkpoint: its newest records were deleted.
Erased or purged texts are not problems: the chain holds their digests, not the texts.

An intact chain may still be incomplete: a record the store refused (a dead letter, see
privacy/audit/writer.py) has an `audit_record_rejected` event in its place. Each is named, with where
its record is kept; the chain is then reported intact but incomplete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from privacy.audit.record import GENESIS_HASH, chain_hash, text_digest
from privacy.audit.signing import Signer, checkpoint_message
from privacy.audit.store import INDEXED_FIELDS, AuditStore


@dataclass
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    problem: str | None = None  # the first broken link, or None
    notes: list[str] = field(default_factory=list)  # facts worth knowing that are not breaks
    unstored: list[str] = field(default_factory=list)  # records the store refused, each named

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def complete(self) -> bool:
        return not self.unstored


def verify(store: AuditStore, signers: Sequence[Signer]) -> VerifyReport:
    """`signers`: the keys to check checkpoint signatures with, matched by key id (more than one after
    a key rotation); none: the chain and the checkpoints' hashes only."""
    report = VerifyReport()
    checkpoints = {checkpoint.seq: checkpoint for checkpoint in store.checkpoints()}
    keys = {signer.key_id: signer for signer in signers}
    unknown_keys: dict[str, int] = {}
    expected_seq, prev_hash = 1, GENESIS_HASH
    for record in store.scan():
        where = f"record seq {record.seq} (id {record.body.get('id')})"
        if not record.body:
            return _broken(report, f"record seq {record.seq}: its body is not a JSON record: the record was edited")
        if record.seq != expected_seq:
            missing = (f"seq {expected_seq}" if record.seq == expected_seq + 1
                       else f"seqs {expected_seq}..{record.seq - 1}")
            return _broken(report, f"{where}: {missing} missing before it: records were deleted")
        if record.prev_hash != prev_hash:
            return _broken(report, f"{where}: prev_hash {record.prev_hash[:16]}… is not the hash of the record "
                                   f"before it ({prev_hash[:16]}…): a record was removed, inserted or moved")
        if chain_hash(prev_hash, record.raw_body) != record.hash:
            return _broken(report, f"{where}: its content does not match its hash: the record was edited")
        for name in INDEXED_FIELDS:
            if record.columns[name] != record.body.get(name):
                return _broken(report, f"{where}: column {name}={record.columns[name]!r} disagrees with the chained "
                                       f"record ({record.body.get(name)!r}): the column was edited")
        digests = record.body.get("texts", {})
        for role, stored in record.texts.items():
            if role not in digests:
                return _broken(report, f"{where}: a stored {role} text the chained record does not list")
            if stored["text"] is not None and text_digest(stored["salt"], stored["text"]) != digests[role]:
                return _broken(report, f"{where}: the stored {role} text does not match its chained digest: "
                                       "the text was edited")
        checkpoint = checkpoints.get(record.seq)
        if checkpoint is not None:
            if checkpoint.hash != record.hash:
                return _broken(report, f"checkpoint at seq {record.seq}: the signed hash is not the chain's hash "
                                       "there: the chain was rewritten")
            signer = keys.get(checkpoint.key_id)
            if signer is None:
                unknown_keys[f"{checkpoint.algorithm} {checkpoint.key_id}"] = \
                    unknown_keys.get(f"{checkpoint.algorithm} {checkpoint.key_id}", 0) + 1
            elif not signer.verify(checkpoint_message(checkpoint.seq, checkpoint.hash, checkpoint.at),
                                   checkpoint.signature):
                return _broken(report, f"checkpoint at seq {record.seq}: the signature does not verify: the "
                                       "checkpoint was forged or edited")
            else:
                report.checkpoints += 1
        if record.body.get("event") == "audit_record_rejected":
            report.unstored.append(_unstored(record.body))
        report.records += 1
        expected_seq, prev_hash = record.seq + 1, record.hash
    report.head_seq, report.head_hash = expected_seq - 1, prev_hash
    beyond = [seq for seq in checkpoints if seq > report.head_seq]
    if beyond:
        return _broken(report, f"the chain ends at seq {report.head_seq} but checkpoint seq {max(beyond)} was signed "
                               f"later: the newest {max(beyond) - report.head_seq} or more records were deleted")
    orphans = store.orphan_texts()
    if orphans:
        record_id, role = orphans[0]
        return _broken(report, f"a stored {role} text for record id {record_id}, which is not in the chain "
                               f"({len(orphans)} such texts)")
    last_checkpoint = max(checkpoints, default=0)
    if report.head_seq > last_checkpoint:
        report.notes.append(f"{report.head_seq - last_checkpoint} newest records are after the last signed "
                            "checkpoint: their deletion could not be detected (`wardgate audit checkpoint` signs now)")
    if keys and checkpoints and report.checkpoints == 0:
        return _broken(report, f"none of the {len(checkpoints)} checkpoints is signed with a key given (they name "
                               f"{', '.join(unknown_keys)}): nothing vouches for the chain")
    for key, count in unknown_keys.items():
        # Their hashes were checked against the chain; their signatures need that key (an older one?).
        report.notes.append(f"{count} checkpoints are signed with {key}, a key not given: signatures not checked")
    return report


def _unstored(event: dict) -> str:
    rejected = event.get("rejected") or {}
    request = f", request id {event['request_id']}" if event.get("request_id") else ""
    return (f"record {rejected.get('id')} ({rejected.get('kind')}{request}) was refused by the store: "
            f"{event.get('error')}; it is kept in {event.get('dead_letter')} on host {event.get('host')}")


def _broken(report: VerifyReport, problem: str) -> VerifyReport:
    report.problem = problem
    return report
