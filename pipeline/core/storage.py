"""Every byte openwit reads or writes goes through Beam's FileSystems, so one code path serves
local folders, s3:// and gs:// (and whatever filesystem a runner registers)."""

from __future__ import annotations

import contextlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

TEMPORARY_SUFFIX = ".inprogress"


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def open_read(path: str):
    """A binary stream of the file as stored (no decompression by extension)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_bytes(path).decode("utf-8"))


@contextlib.contextmanager
def create_atomic(path: str):
    """A binary stream to write `path` through: written under a temporary name, renamed into
    place when the block ends without an error, so readers see the whole file or nothing.

    Every Beam filesystem's rename replaces an existing target (os.rename locally, copy on
    s3:// and gs://), so an older version stays readable until the new one takes its place.
    """
    temporary = path + TEMPORARY_SUFFIX
    with FileSystems.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        yield f
    FileSystems.rename([temporary], [path])


def write_bytes_atomic(path: str, data: bytes) -> None:
    with create_atomic(path) as f:
        f.write(data)


def write_json_atomic(path: str, value, sort_keys: bool = True) -> None:
    """Sorted keys by default (stable diffs); `sort_keys=False` keeps insertion order."""
    text = json.dumps(value, indent=1, sort_keys=sort_keys) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def glob(pattern: str) -> list[str]:
    (result,) = FileSystems.match([pattern])
    return sorted(m.path for m in result.metadata_list)


def delete(paths: list[str]) -> None:
    existing = [p for p in paths if FileSystems.exists(p)]
    if existing:
        FileSystems.delete(existing)


def encode_parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    """Rows as one zstd-compressed parquet file (its bytes)."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(path)), columns=columns)


def exists(path: str) -> bool:
    return FileSystems.exists(path)
