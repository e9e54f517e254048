"""Every byte openwit reads or writes goes through here: one API for local folders, s3://, gs://
and whatever filesystem a runner registers.

s3:// goes to `s3` (boto3 directly, one client per process and store, with the credentials and
endpoint of Beam's `--s3_*` options); every other scheme goes through Beam's FileSystems.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re

import pyarrow as pa
import pyarrow.parquet as pq

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from openwit.pipeline.core import s3
from openwit.pipeline.core.errors import ConfigError

TEMPORARY_SUFFIX = ".inprogress"
WRITE_CHECK_NAME = ".openwit-write-check"
_CLIENT_MODULES = ("apache_beam/io/aws/", "apache_beam/io/gcp/", "apache_beam/utils/retry")
# Words in a store's error text that say what the user must fix, and what they mean.
_PERMANENT = (("NoSuchBucket", "no such bucket"), ("AccessDenied", "access denied"),
              ("InvalidAccessKeyId", "the access key is not known to the store"),
              ("SignatureDoesNotMatch", "the secret key does not match the access key"),
              ("Could not connect", "cannot connect to the endpoint"))
# HTTP statuses that Beam's S3 and GCS errors carry as `code`, for stores that word them otherwise.
_PERMANENT_CODES = {403: "access denied", 404: "not found"}


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def is_local(path: str) -> bool:
    """A path on this machine's disk (no scheme, or file://), not an object store's."""
    return FileSystems.get_scheme(path) in (None, "file")


def open_read(path: str):
    """A seekable binary stream of the file as stored (no decompression by extension)."""
    if is_s3(path):
        return s3.open_read(path)
    try:
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    # Beam's GCS client raises google-api-core's NotFound, not an OSError: one exception for a
    # missing file whatever the store, as locally and on s3://.
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a 404
        if getattr(err, "code", None) == 404:
            raise FileNotFoundError(f"{path}: no such file") from err
        raise


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_bytes(path).decode("utf-8"))


@contextlib.contextmanager
def create_atomic(path: str):
    """A binary stream to write `path` through, so readers see the whole file or nothing: if
    the block raises, nothing new appears under `path`, and an older version stays readable
    until the new one replaces it.

    On s3:// the object itself is the commit (PutObject, or CompleteMultipartUpload when the
    block ends; an error aborts the upload). Elsewhere the bytes go to a temporary name that a
    rename moves into place (os.rename locally; copy and delete on gs://, whose uploads commit
    what was written even when the writer fails).
    """
    if is_s3(path):
        upload = s3.create(path)
        try:
            yield upload
        except BaseException:
            upload.abort()
            raise
        upload.close()
        return
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
    """Paths matching `pattern` (`*` within a folder, `**` across folders), sorted."""
    return [info.path for info in glob_info(pattern)]


def glob_info(pattern: str) -> list[s3.ObjectInfo]:
    """Like `glob`, with each file's size and version (an S3 ETag, else the modification time),
    which say whether an input changed between runs."""
    if is_s3(pattern):
        return s3.list_matching(pattern)
    (result,) = FileSystems.match([pattern])
    return sorted((s3.ObjectInfo(m.path, m.size_in_bytes, repr(m.last_updated_in_seconds))
                   for m in result.metadata_list), key=lambda info: info.path)


def delete(paths: list[str]) -> None:
    """Deletes what exists of `paths`; a path that is not there is not an error."""
    if not paths:
        return
    remote = [p for p in paths if is_s3(p)]
    if remote:
        s3.delete(remote)
    existing = [p for p in paths if not is_s3(p) and FileSystems.exists(p)]
    if existing:
        FileSystems.delete(existing)


def remove_leftovers(folder: str) -> int:
    """Removes what a killed run left under `folder`: temporary files, and on s3:// the
    incomplete multipart uploads (invisible, but stored). Returns how many."""
    leftovers = glob(join(folder, "**" + TEMPORARY_SUFFIX))
    delete(leftovers)
    return len(leftovers) + (s3.abort_uploads(folder) if is_s3(folder) else 0)


def encode_parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    """Rows as one zstd-compressed parquet file (its bytes)."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(path)), columns=columns)


def exists(path: str) -> bool:
    if is_s3(path):
        return s3.exists(path)
    return FileSystems.exists(path)


def check_writable(folder: str) -> None:
    """Fail at launch with one line naming the folder or bucket when it cannot be written (no
    such bucket, access denied, an endpoint that does not answer), rather than from inside a
    worker after the downloads: writes a small object into `folder` and deletes it."""
    probe = join(folder, WRITE_CHECK_NAME)
    try:
        with _quiet_clients():
            if is_s3(probe):
                s3.check_writable(probe)
                return
            # Written in place (no rename: a probe needs no atomicity), and not empty: Beam's
            # S3 uploader cannot complete an upload of no parts.
            with FileSystems.create(probe, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(b"openwit\n")
            FileSystems.delete([probe])
    # Any filesystem's error (OSError, Beam's S3 and GCS client errors): this is the launch
    # boundary, and the message below is the user's to act on.
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"cannot write to {_where(folder)}: {_reason(err)}") from None


@contextlib.contextmanager
def at_launch():
    """The storage work a launcher does around a pipeline (listing inputs, clearing and reading
    back outputs) runs on the user's machine against the store, before any worker exists: a
    store's error there (no credentials, no such bucket, an endpoint that does not answer) is
    the user's to fix, and ends as one line naming what failed rather than a traceback."""
    try:
        with _quiet_clients():
            yield
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - only a store's errors are translated
        if not _is_store_error(err):
            raise
        raise ConfigError(f"storage: {_reason(err)}") from None


_STORE_ERROR_MODULES = ("google.", "botocore.", "boto3.", "urllib3.", "requests.",
                        "apache_beam.io.")


def _is_store_error(err: BaseException) -> bool:
    """OSError (local disks, and what `s3` raises) and the exceptions of the store clients'
    libraries (Beam's BeamIOError, google-api-core, google-auth, botocore)."""
    return isinstance(err, OSError) or type(err).__module__.startswith(_STORE_ERROR_MODULES)


class _BeamClientRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in record.pathname for part in _CLIENT_MODULES)


@contextlib.contextmanager
def _quiet_clients():
    """Beam's S3 and GCS clients log a traceback (on the root logger) for every failed request
    before raising: the error is reported once, by `check_writable`."""
    quiet = _BeamClientRecords()
    logger = logging.getLogger()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _where(folder: str) -> str:
    scheme = re.match(r"^([a-z][a-z0-9+.-]*)://([^/]*)", folder)
    if scheme and scheme.group(1) != "file":
        return f"{folder!r} (bucket {scheme.group(2)!r})"
    return repr(folder)


def _reason(err: Exception) -> str:
    """The store's answer in a few words: credentials never appear in a store's error text,
    but the text is cut to its first line and Beam's step name is dropped. Beam's BeamIOError
    holds the store's own error per path: that one is told."""
    details = getattr(err, "exception_details", None)
    if isinstance(details, dict) and details:
        where, inner = next(iter(details.items()))
        if isinstance(inner, BaseException):
            return f"{where}: {_reason(inner)}"
    text = str(getattr(err, "message", None) or err or type(err).__name__).splitlines()[0]
    text = re.sub(r" \[while running .*$", "", text)[:300]
    status = getattr(err, "code", None) or (getattr(err, "response", None) or {}).get(
        "ResponseMetadata", {}).get("HTTPStatusCode")
    meaning = next((meaning for marker, meaning in _PERMANENT if marker in text),
                   _PERMANENT_CODES.get(status))
    return f"{meaning} ({text})" if meaning else text
