"""Writing dict rows as parquet part files, fast and retry-safe.

Beam's `WriteToParquet` appends every row to per-column Python lists, a Python step per
value; this writer hands each chunk of rows to pyarrow at once (`Table.from_pylist`, in C++). A part is
named after its content (a hash of its rows' keys), written under a temporary name and renamed:
a bundle that a runner retries writes the same name again instead of a second copy, and a
reader never sees half a file. The transform's output is the paths it wrote, so a later pass
can read exactly these files (and only after they exist).
"""

from __future__ import annotations

import io

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from openwit.pipeline.core import storage
from openwit.pipeline.core.records import in_global_window, stable_hash64

ROWS_PER_PART = 20_000  # rows held per worker before a part is written: memory stays small
ROWS_PER_GROUP = 10_000


def part_name(prefix: str, rows: list[dict]) -> str:
    fingerprint = 0
    for row in rows:
        fingerprint ^= stable_hash64(row["key"], str(row.get("row", "")))
    return f"{prefix}-{fingerprint:016x}-{len(rows)}.parquet"


class _WritePartsFn(beam.DoFn):
    def __init__(self, folder: str, prefix: str, schema: pa.Schema, rows_per_part: int):
        self._folder = folder
        self._prefix = prefix
        self._schema = schema
        self._rows_per_part = rows_per_part

    def start_bundle(self):
        self._rows: list[dict] = []

    def process(self, row_or_rows):
        if isinstance(row_or_rows, list):
            self._rows.extend(row_or_rows)
        else:
            self._rows.append(row_or_rows)
        if len(self._rows) >= self._rows_per_part:
            yield self._flush()

    def finish_bundle(self):
        if self._rows:
            yield in_global_window(self._flush())

    def _flush(self) -> str:
        rows, self._rows = self._rows, []
        table = pa.Table.from_pylist(rows, schema=self._schema)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", row_group_size=ROWS_PER_GROUP)
        path = storage.join(self._folder, part_name(self._prefix, rows))
        storage.write_bytes_atomic(path, buffer.getvalue())
        return path


class WriteParquetParts(beam.PTransform):
    """dict rows (with a `key`), or lists of them -> parquet files
    `FOLDER/PREFIX-<hash>-<rows>.parquet`; emits the paths. Fields outside `schema` are left
    out."""

    def __init__(self, folder: str, prefix: str, schema: pa.Schema,
                 rows_per_part: int = ROWS_PER_PART):
        super().__init__()
        self._fn = _WritePartsFn(folder, prefix, schema, rows_per_part)

    def expand(self, rows):
        return rows | "Write parts" >> beam.ParDo(self._fn)


class _ReadPartFn(beam.DoFn):
    def __init__(self, batch_rows: int):
        self._batch_rows = batch_rows

    def process(self, path):
        with storage.open_read(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self._batch_rows):
                yield batch.to_pylist()


class ReadParquetParts(beam.PTransform):
    """Paths of parquet parts -> their rows as lists of up to `batch_rows` dicts (pyarrow
    converts a batch at a time; Beam's ReadAllFromParquet builds each dict in Python)."""

    def __init__(self, batch_rows: int = ROWS_PER_GROUP):
        super().__init__()
        self._batch_rows = batch_rows

    def expand(self, paths):
        # The reshuffle starts a new stage that reads the parts: without it a runner fuses the
        # read into the stage that wrote them, and a consumer that waits for a side input
        # computed from those files makes it hold every row in between.
        return (paths
                | "Spread parts" >> beam.Reshuffle()
                | "Read parts" >> beam.ParDo(_ReadPartFn(self._batch_rows)))
