"""WARC records of one (gzip-per-record) WARC or WAT file, read past the damage in it.

FastWARC (Rust) parses and decompresses; it reads the same records as warcio, several times
faster (benchmarks/RESULTS.md). Neither library reads on after a corrupt gzip member: the
iterator raises (FastWARC: OSError) and is spent. Common Crawl writes one gzip member per
record, so after an error the reader looks for the next place where a gzip member starts
(`1f 8b 08`) and decompresses to a WARC header, and starts a new iterator there. What it
skipped is counted: one `unreadable_region` per run of bad bytes (a corrupt member, garbage
between members, several bad members in a row), and a record whose body ends early (a file cut
off mid-record) is a `truncated_record`. A record over the size limit is read past, never
held: `oversized_record`.

The stream must be seekable (every storage stream is: local, s3://, gs://).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator

GZIP_MAGIC = b"\x1f\x8b\x08"
SCAN_CHUNK = 1 << 20
HEADER_PROBE = 1 << 16  # compressed bytes decompressed to check a member starts a record
# fastwarc's WarcRecordType values; plain ints because its enum does not pickle (Beam ships
# DoFns by pickle).
RESPONSE = 4
METADATA = 32


class ReadCount:
    """What reading a file counted, besides its records. Stable strings: stats.json keys."""

    UNREADABLE_REGION = "unreadable_region"
    TRUNCATED_RECORD = "truncated_record"
    OVERSIZED_RECORD = "oversized_record"


@dataclasses.dataclass(frozen=True)
class Record:
    """The parts of a WARC record a candidate needs; plain values, so they outlive the
    iterator (FastWARC's records are valid only until the next one)."""

    record_type: int
    target_uri: str | None
    date: str | None
    record_id: str | None
    block: bytes  # the content block: HTTP headers and body for a response record


def read_records(stream, counts: dict, max_record_bytes: int,
                 record_types: int = RESPONSE | METADATA) -> Iterator[Record]:
    """The records of `record_types` in a seekable binary stream, in file order. Damage is
    skipped and counted in `counts` (by `ReadCount`); nothing raises for a bad file."""
    from fastwarc.warc import ArchiveIterator

    start, progressed = stream.tell(), True
    while start is not None:
        stream.seek(start)
        last_start = None
        try:
            # The whole block, HTTP headers included (`crawl/html.py` reads those), so that a
            # block that ends early is seen against its Content-Length.
            for record in ArchiveIterator(stream, parse_http=False):
                last_start = record.stream_pos
                progressed = True
                kind = int(record.record_type)
                if not kind & record_types:
                    continue
                if record.content_length > max_record_bytes:
                    _count(counts, ReadCount.OVERSIZED_RECORD)
                    continue
                block = record.reader.read()
                # A file cut off inside a record's headers gives a record without its length.
                declared = (record.headers.get("Content-Length") or "").strip()
                if not declared.isdigit() or len(block) < record.content_length:
                    _count(counts, ReadCount.TRUNCATED_RECORD)
                    continue
                headers = record.headers
                yield Record(record_type=kind, target_uri=headers.get("WARC-Target-URI"),
                             date=headers.get("WARC-Date"),
                             record_id=headers.get("WARC-Record-ID"), block=block)
            return
        except OSError:
            # A run of bad members is one region: a restart that fails before any record
            # continues the region the last failure opened.
            if progressed:
                _count(counts, ReadCount.UNREADABLE_REGION)
            progressed = False
            start = next_member(stream, (last_start if last_start is not None else start) + 1)


def next_member(stream, offset: int) -> int | None:
    """The offset of the first gzip member at or after `offset` that decompresses to a WARC
    record's start, or None at the end of the file."""
    while True:
        stream.seek(offset)
        chunk = stream.read(SCAN_CHUNK + len(GZIP_MAGIC) - 1)
        if len(chunk) < len(GZIP_MAGIC):
            return None
        found = chunk.find(GZIP_MAGIC)
        while found >= 0:
            if _starts_a_record(stream, offset + found):
                return offset + found
            found = chunk.find(GZIP_MAGIC, found + 1)
        offset += SCAN_CHUNK


def _starts_a_record(stream, offset: int) -> bool:
    stream.seek(offset)
    head = stream.read(HEADER_PROBE)
    try:
        return zlib.decompressobj(31).decompress(head, 5) == b"WARC/"
    except zlib.error:
        return False


def _count(counts: dict, name: str) -> None:
    counts[name] = counts.get(name, 0) + 1
