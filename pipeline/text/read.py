"""Stage 1: read candidate lists (parquet, CSV/TSV, JSONL) into candidate dicts.

Files are split into independent units (a parquet row group, or a whole text file) and the
units are reshuffled before parsing, so a list of many parquet files, or one large one, spreads
over all workers. Rows that cannot become a candidate (no URL, not an http(s) URL, an unparsable
line, a CSV row with the wrong number of fields) are failures with a reason, never dropped.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import json
import os
import re
import typing
import urllib.parse

import apache_beam as beam
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from openwit.pipeline.core import storage
from openwit.pipeline.text.config import ReadConfig
from openwit.pipeline.text.steps import BATCH_SIZE
from openwit.pipeline.core.records import (
    FAILED,
    KEPT,
    Reason,
    Stage,
    failure,
    sample_key,
    stable_hash64,
)

URL_COLUMNS = ("url", "URL", "image_url", "imageurl", "link")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt", "alt_text", "title")
FORMATS_BY_EXTENSION = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
COMPRESSED_EXTENSIONS = (".gz", ".bz2")
FETCHABLE_SCHEMES = ("http", "https")
# Untrusted lists get size limits: a URL longer than browsers and CDNs accept is no image URL,
# and a line or field this long is no candidate row (a caption that long is dropped later).
MAX_URL_CHARS = 8192
MAX_LINE_BYTES = 1 << 20
CSV_BLOCK_BYTES = 16 << 20  # pyarrow's CSV reader needs every row to fit in one block
SHOWN_CHARS = 200  # of a bad row, in its failure record


def detect_format(path: str, forced: str | None) -> str:
    if forced:
        return forced
    base = path
    for compressed in COMPRESSED_EXTENSIONS:
        base = base.removesuffix(compressed)
    fmt = FORMATS_BY_EXTENSION.get(os.path.splitext(base)[1].lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path!r} from its extension; pass --input-format"
        )
    return fmt


def resolve_column(available: list[str], wanted: str | None, defaults: tuple[str, ...], what: str,
                   path: str) -> str:
    if wanted is not None:
        if wanted not in available:
            raise ValueError(f"{path}: no {what} column {wanted!r}; columns are {available}")
        return wanted
    for name in defaults:
        if name in available:
            return name
    raise ValueError(
        f"{path}: none of the usual {what} columns {list(defaults)} is present; columns are "
        f"{available}; pass --{what}-col"
    )


# Most URLs are plain: lower-case http(s) scheme and host, no port, user or fragment. Those are
# fetchable without a full parse (urlsplit costs a few microseconds per row).
# Printable ASCII only (no control character, space or fragment): anything else takes the
# full check.
PLAIN_URL = re.compile(r"https?://[a-z0-9.\-]+/[!-\"$-~]*")
_ROW_ID_MASK = 2**63 - 1  # Beam's integer coder is signed 64-bit


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_url(url) -> str | None:
    """The reason a URL cannot be fetched at all, or None. Policy checks come at download."""
    if isinstance(url, str) and PLAIN_URL.fullmatch(url) and len(url) <= MAX_URL_CHARS:
        return None
    if url is None:
        return Reason.MISSING_URL
    if not isinstance(url, str):
        return Reason.INVALID_URL
    if not url.strip():
        return Reason.MISSING_URL
    url = url.strip()
    if len(url) > MAX_URL_CHARS or _CONTROL.search(url) or not is_valid_unicode(url):
        return Reason.INVALID_URL
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return Reason.INVALID_URL
    if parts.scheme.lower() not in FETCHABLE_SCHEMES or not parts.hostname:
        return Reason.INVALID_URL
    return None


class RowPlace:
    """Where rows of one unit come from: names a row in failure details (built only for a
    failure), and gives each row an id. The id tells apart two copies of one row (the same
    key), so that URL dedup keeps exactly one: a hash of the unit plus the row's index."""

    def __init__(self, path: str, kind: str):
        self._prefix = f"{path} {kind}"  # "f.parquet row group 3 row", "f.csv row", "f.jsonl line"
        self._unit = stable_hash64(self._prefix)

    def row_id(self, index: int) -> int:
        return (self._unit + index) & _ROW_ID_MASK

    def describe(self, index: int) -> str:
        return f"{self._prefix} {index}"


def is_valid_unicode(text: str) -> bool:
    """False for a string that no file can hold as UTF-8: one with a lone surrogate (JSON's
    "\\ud800" decodes to one)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str | None) -> str | None:
    """A bad row's text as its failure record shows it: valid UTF-8, and short."""
    if text is None:
        return None
    return text[:SHOWN_CHARS].encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def malformed_row(text: str | None, where: str, why: str, key_source: str | None = None) -> dict:
    """The failure record of a row that is no candidate; its key hashes `key_source` (the
    row's file and line) or `where`."""
    record = {"key": sample_key("", key_source or where), "url": None, "caption": shown(text)}
    return failure(record, Stage.READ, Reason.MALFORMED_ROW, f"{where}: {why}")


def row_to_candidate(url, caption, place: RowPlace, index: int):
    """A candidate dict, or a failure dict (with `stage` set) for a row that cannot be one."""
    if caption is None:
        caption = ""
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            return malformed_row(caption.decode("utf-8", "replace"), place.describe(index),
                                 "caption is not valid UTF-8")
    if not isinstance(caption, str):
        caption = str(caption)
    if not is_valid_unicode(caption):
        return malformed_row(caption, place.describe(index),
                             "caption is not valid Unicode (a lone surrogate)")
    reason = check_url(url)
    if reason is not None:
        shown_url = shown(url) if isinstance(url, str) else None
        record = {"key": sample_key(shown_url or "", caption), "url": shown_url, "caption": caption}
        return failure(record, Stage.READ, reason,
                       shown(f"{place.describe(index)}: url={url!r}"))
    url = url.strip()
    return {"key": sample_key(url, caption), "url": url, "caption": caption,
            "row": place.row_id(index)}


class SplitIntoUnits(beam.DoFn):
    """A matched file becomes (path, format, row_group) units; text files are one unit each."""

    def __init__(self, forced_format: str | None):
        self._forced_format = forced_format

    def process(self, metadata):
        path = metadata.path
        fmt = detect_format(path, self._forced_format)
        if fmt == "parquet":
            with storage.open_read(path) as f:
                row_groups = pq.ParquetFile(f).num_row_groups
            for index in range(row_groups):
                yield (path, fmt, index)
        else:
            yield (path, fmt, None)


class ParseUnit(beam.DoFn):
    """A unit -> lists of up to `batch_size` candidate dicts, failures tagged FAILED, and the
    unit's row count tagged ROWS."""

    def __init__(self, config: ReadConfig, batch_size: int = BATCH_SIZE):
        self._config = config
        self._batch_size = batch_size

    def setup(self):
        self._rows = Metrics.counter("openwit", "read.rows")
        self._malformed = Metrics.counter("openwit", "read.failed")

    def process(self, unit):
        path, fmt, row_group = unit
        parse = {"parquet": self._parquet, "csv": self._delimited, "tsv": self._delimited,
                 "jsonl": self._jsonl}[fmt]
        rows = malformed = 0
        batch: list[dict] = []
        for result in parse(path, fmt, row_group):
            rows += 1
            if "stage" in result:
                malformed += 1
                yield beam.pvalue.TaggedOutput(FAILED, result)
            else:
                batch.append(result)
                if len(batch) >= self._batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch
        # Counted at the source, per unit: the input rows that every stage accounts for.
        self._rows.inc(rows)
        self._malformed.inc(malformed)
        yield beam.pvalue.TaggedOutput(ROWS, rows)

    @contextlib.contextmanager
    def _open(self, path: str):
        # Python's own decompressors: pyarrow's CSV reader and TextIOWrapper need a real io
        # object, which Beam's CompressedFile is not.
        with storage.open_read(path) as raw:
            if path.endswith(".gz"):
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    yield f
            elif path.endswith(".bz2"):
                with bz2.BZ2File(raw, mode="rb") as f:
                    yield f
            else:
                yield raw

    def _parquet(self, path, fmt, row_group):
        with storage.open_read(path) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            url_col = resolve_column(names, self._config.url_column, URL_COLUMNS, "url", path)
            caption_col = resolve_column(names, self._config.caption_column, CAPTION_COLUMNS,
                                         "caption", path)
            table = parquet.read_row_group(row_group, columns=[url_col, caption_col])
        urls = table.column(url_col).to_pylist()
        captions = table.column(caption_col).to_pylist()
        place = RowPlace(path, f"row group {row_group} row")
        for index, (url, caption) in enumerate(zip(urls, captions)):
            yield row_to_candidate(url, caption, place, index)

    def _delimited(self, path, fmt, row_group):
        delimiter = "\t" if fmt == "tsv" else ","
        with self._open(path) as f:
            header_line = f.readline().decode("utf-8-sig", "replace")
        names = next(csv.reader([header_line], delimiter=delimiter), [])
        url_col = resolve_column(names, self._config.url_column, URL_COLUMNS, "url", path)
        caption_col = resolve_column(names, self._config.caption_column, CAPTION_COLUMNS,
                                     "caption", path)
        bad_rows = []

        def on_invalid_row(row):
            bad_rows.append(row)
            return "skip"

        with self._open(path) as f:
            reader = pacsv.open_csv(
                f,
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, newlines_in_values=True,
                    invalid_row_handler=on_invalid_row,
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=[url_col, caption_col],
                    # Bytes, decoded row by row: one invalid UTF-8 byte must cost its row,
                    # not the file (pyarrow's string conversion fails the whole batch).
                    column_types={url_col: pa.binary(), caption_col: pa.binary()},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
                read_options=pacsv.ReadOptions(use_threads=False, block_size=CSV_BLOCK_BYTES),
            )
            row_index = 0
            place = RowPlace(path, "row")
            batches = iter(reader)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except pa.ArrowInvalid as err:  # e.g. a row larger than a block
                    yield malformed_row(None, f"{path} after row {row_index}",
                                        f"the rest of the file cannot be parsed: {err}")
                    break
                while bad_rows:
                    yield self._malformed_csv_row(path, bad_rows.pop(0))
                urls = batch.column(url_col).to_pylist()
                captions = batch.column(caption_col).to_pylist()
                for url, caption in zip(urls, captions):
                    yield text_row(url, caption, place, row_index)
                    row_index += 1
        for row in bad_rows:
            yield self._malformed_csv_row(path, row)

    @staticmethod
    def _malformed_csv_row(path, row):
        return malformed_row(row.text or "", f"{path} line {row.number}",
                             f"expected {row.expected_columns} fields, got {row.actual_columns}",
                             key_source=f"{path}:{row.number}")

    def _jsonl(self, path, fmt, row_group):
        place = RowPlace(path, "line")
        with self._open(path) as f:
            for number, data in bounded_lines(f, MAX_LINE_BYTES):
                where, key_source = f"{path} line {number}", f"{path}:{number}"
                if data is None:
                    yield malformed_row(None, where, f"longer than {MAX_LINE_BYTES} bytes",
                                        key_source)
                    continue
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield malformed_row(data.decode("utf-8", "replace"), where,
                                        f"not valid UTF-8 ({err.reason} at byte {err.start})",
                                        key_source)
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    yield malformed_row(line, where, str(err), key_source)
                    continue
                except RecursionError:
                    yield malformed_row(line, where, "nested too deeply", key_source)
                    continue
                if not isinstance(row, dict):
                    yield malformed_row(line, where, "not a JSON object", key_source)
                    continue
                names = list(row)
                url_col = _first_present(names, self._config.url_column, URL_COLUMNS)
                caption_col = _first_present(names, self._config.caption_column, CAPTION_COLUMNS)
                yield row_to_candidate(row.get(url_col) if url_col else None,
                                       row.get(caption_col) if caption_col else None,
                                       place, number)


def text_row(url: bytes | None, caption: bytes | None, place: RowPlace, index: int):
    """A row of a text file, its fields as bytes -> a candidate or a failure dict."""
    if url is not None:
        try:
            url = url.decode("utf-8")
        except UnicodeDecodeError:
            return malformed_row(url.decode("utf-8", "replace"), place.describe(index),
                                 "url is not valid UTF-8")
    return row_to_candidate(url or None, caption, place, index)


def bounded_lines(stream, limit: int):
    """(line number, bytes) of each line; (number, None) for a line longer than `limit`,
    which is skipped without ever being held whole."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while True:
                rest = stream.readline(limit)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, line


def _first_present(names: list[str], wanted: str | None, defaults: tuple[str, ...]) -> str | None:
    # JSON rows may omit a field: that row becomes a counted failure, not a crash of the file.
    if wanted is not None:
        return wanted
    return next((name for name in defaults if name in names), None)


ROWS = "rows"


class ReadResult(typing.NamedTuple):
    kept: beam.PCollection  # lists of candidate dicts (see text/steps.py)
    failed: beam.PCollection  # failure dicts
    rows: beam.PCollection  # rows read per unit (sum them for the input rows)


class ReadCandidates(beam.PTransform):
    """Candidate lists -> ReadResult(kept: batches of candidates, failed, rows)."""

    def __init__(self, config: ReadConfig, batch_size: int = BATCH_SIZE):
        super().__init__()
        self._config = config
        self._batch_size = batch_size

    def expand(self, pbegin):
        parsed = (
            pbegin
            | "Patterns" >> beam.Create(list(self._config.candidates))
            | "Match files" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
            | "Split into units" >> beam.ParDo(SplitIntoUnits(self._config.input_format))
            | "Spread units" >> beam.Reshuffle()
            | "Parse rows" >> beam.ParDo(ParseUnit(self._config, self._batch_size)).with_outputs(
                FAILED, ROWS, main=KEPT)
        )
        return ReadResult(parsed[KEPT], parsed[FAILED], parsed[ROWS])
