"""The audit log as people read it: records as a table, JSON lines or CSV, and counts per time
bucket as a table (`wardgate audit query|tail|export|stats`)."""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

import orjson

from privacy.audit.store import StoredRecord


def utc_text(at: float, timespec: str = "seconds") -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


_TABLE_COLUMNS = (("seq", ">7"), ("time (UTC)", "<19"), ("tenant", "<12"), ("route", "<20"), ("status", ">6"),
                  ("decision", "<8"), ("category", "<10"), ("rule_id", "<24"), ("latency ms", ">10"), ("prompt", ""))
_CSV_COLUMNS = ("seq", "id", "request_id", "at", "time_utc", "kind", "event", "tenant", "key_id", "route", "method",
                "status", "model", "decision", "category", "rule_id", "score", "error_code", "latency_ms",
                "policy_version", "policy_digest", "retention", "prompt", "completion", "hash")
_EXCERPT_CHARS = 60


def _excerpt(record: StoredRecord, role: str = "prompt") -> str:
    if role in record.texts:
        text = record.texts[role]["text"]
        if text is None:
            return "(not kept)"  # retention: none, only the digest
        text = " ".join(text.split())
        return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS - 1] + "…"
    return "(removed)" if role in record.body.get("texts", {}) else "-"  # erased or past retention


class RecordPrinter:
    """Writes records to `out` in one of the formats (table, json, csv); the table and csv headers come once."""

    def __init__(self, output_format: str, out: TextIO | None = None) -> None:
        self.format = output_format
        self.out = out or sys.stdout
        self.headed = False
        self._csv = None

    def write(self, records: list[StoredRecord]) -> None:
        if self.format == "json":
            for record in records:
                print(orjson.dumps(record.as_dict()).decode(), file=self.out)
        elif self.format == "csv":
            self._write_csv(records)
        else:
            self._write_table(records)

    def _write_table(self, records: list[StoredRecord]) -> None:
        if not self.headed:
            self.headed = True
            print("  ".join(f"{name:{spec}}" for name, spec in _TABLE_COLUMNS).rstrip(), file=self.out)
        for record in records:
            body = record.body
            route = body.get("route") or (f"({body['event']})" if body.get("event") else None)
            latency = f"{body['latency_ms']:.1f}" if isinstance(body.get("latency_ms"), int | float) else None
            values = (record.seq, utc_text(body["at"]).replace("T", " ").removesuffix("Z"), body.get("tenant"), route,
                      body.get("status"), body.get("decision"), body.get("category"), body.get("rule_id"), latency,
                      _excerpt(record))
            print("  ".join(f"{'-' if value is None else value!s:{spec}}"
                            for value, (_, spec) in zip(values, _TABLE_COLUMNS, strict=True)).rstrip(), file=self.out)

    def _write_csv(self, records: list[StoredRecord]) -> None:
        if self._csv is None:
            self._csv = csv.writer(self.out, lineterminator="\n")
        if not self.headed:
            self.headed = True
            self._csv.writerow(_CSV_COLUMNS)
        for record in records:
            row = {**record.body, "seq": record.seq, "time_utc": utc_text(record.body["at"], "microseconds"),
                   "hash": record.hash}
            for role in ("prompt", "completion"):
                row[role] = record.texts.get(role, {}).get("text")
            self._csv.writerow(["" if row.get(name) is None else row[name] for name in _CSV_COLUMNS])
        self.out.flush()


def stats_table(rows: list[tuple[float, str | None, int]], bucket: str, label: Callable[[float], str],
                out: TextIO | None = None) -> None:
    """One line per bucket, one column per value (`-`: records without one, e.g. events for `decision`)."""
    out = out or sys.stdout
    values = sorted({value for _, value, _ in rows}, key=lambda value: (value is None, value or ""))
    counts: dict[float, dict[str | None, int]] = {}
    for start, value, count in rows:
        counts.setdefault(start, {})[value] = count
    names = ["-" if value is None else value for value in values]
    widths = [max(len(name), 6) for name in names]
    first = f"{bucket} (UTC)"
    print(f"{first:<17}  " + "  ".join(f"{name:>{width}}" for name, width in zip(names, widths, strict=True))
          + f"  {'total':>7}", file=out)
    for start, by_value in counts.items():
        cells = "  ".join(f"{by_value.get(value, 0):>{width}}" for value, width in zip(values, widths, strict=True))
        print(f"{label(start):<17}  {cells}  {sum(by_value.values()):>7}", file=out)
    totals = "  ".join(f"{sum(row.get(value, 0) for row in counts.values()):>{width}}"
                       for value, width in zip(values, widths, strict=True))
    print(f"{'total':<17}  {totals}  {sum(count for _, _, count in rows):>7}", file=out)
