"""s3:// on boto3 directly: one client per process and store, parallel multipart uploads, reads
that resume where a dropped connection left them, and no rename.

`storage` sends s3:// paths here rather than through Beam's S3 filesystem, which builds a new
boto3 session and client for every call, uploads the parts of an object one after another, and
renames by copy and delete. The store and its credentials are still Beam's `--s3_*` options (or,
without them, boto3's standard chain: environment, ~/.aws, instance roles, `AWS_ENDPOINT_URL`),
read from the options Beam hands every worker, so AWS S3, MinIO, Ceph, R2 and the like work the
same way on any runner.

An S3 object becomes visible only when its PutObject or CompleteMultipartUpload succeeds, so a
write needs no temporary name: an upload that fails is aborted, and one whose process is killed
stays an incomplete multipart upload, invisible to readers, until `abort_uploads` removes it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import random
import re
import threading
import time

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options
from apache_beam.options.value_provider import RuntimeValueProvider

MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB  # S3's smallest part but the last
MAX_PARTS = 10_000  # S3's most parts per upload
PART_CHECKSUM = "CRC32"  # what boto3's transfer manager asks for by default
DELETE_BATCH = 1000  # S3's most keys per DeleteObjects
# Failures of a body already under way, which botocore's retries do not cover: a read resumes
# from the byte it reached.
_STREAM_RETRIES = 5


class ObjectStoreOptions(PipelineOptions):
    """How openwit talks to s3:// (the store and its credentials are Beam's S3Options)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--s3_part_size_mb", type=int, default=8,
            help="multipart upload part size in MiB (at least 5); an object smaller than one "
                 "part is one PutObject")
        parser.add_argument(
            "--s3_upload_threads", type=int, default=10,
            help="parts of one object uploaded at once")
        parser.add_argument(
            "--s3_max_attempts", type=int, default=10,
            help="attempts per S3 request, the first included (botocore's standard retries: throttling such as "
                 "503 SlowDown, 5xx, connection errors and timeouts back off and retry)")


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """One store as a client sees it; the secrets stay out of repr (and so out of logs)."""

    endpoint_url: str | None = None
    region_name: str | None = None
    access_key_id: str | None = dataclasses.field(default=None, repr=False)
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    verify: str | None = None
    use_ssl: bool = True
    part_bytes: int = 8 * MIB
    upload_threads: int = 10
    max_attempts: int = 10

    @classmethod
    def of(cls, options: PipelineOptions) -> "S3Settings":
        s3, store = options.view_as(S3Options), options.view_as(ObjectStoreOptions)
        return cls(endpoint_url=s3.s3_endpoint_url, region_name=s3.s3_region_name,
                   access_key_id=s3.s3_access_key_id, secret_access_key=s3.s3_secret_access_key,
                   session_token=s3.s3_session_token, verify=s3.s3_verify,
                   use_ssl=not s3.s3_disable_ssl,
                   part_bytes=max(MIN_PART_BYTES, store.s3_part_size_mb * MIB),
                   upload_threads=max(1, store.s3_upload_threads),
                   max_attempts=max(1, store.s3_max_attempts))


def current_settings() -> S3Settings:
    """The settings of the options Beam holds for this process: those a job set with
    `FileSystems.set_options`, or on a runner's worker, the pipeline's."""
    options = FileSystems._pipeline_options or RuntimeValueProvider.runtime_options
    if options is None:
        return S3Settings()
    if not isinstance(options, PipelineOptions):  # a runner's worker holds a plain dict
        options = PipelineOptions.from_dictionary(dict(options))
    return S3Settings.of(options)


_CLIENT_LOCK = threading.Lock()  # boto3 sessions are not thread-safe; clients are


@functools.lru_cache(maxsize=16)
def client(settings: S3Settings):
    """One boto3 client per store and process, shared by every thread."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
                    connect_timeout=10, read_timeout=60,
                    max_pool_connections=max(10, 2 * settings.upload_threads))
    with _CLIENT_LOCK:
        return boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region_name,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token, verify=settings.verify,
            use_ssl=settings.use_ssl, config=config)


def split(path: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    match = re.match(r"^s3://([^/]+)/?(.*)$", path)
    if match is None:
        raise ValueError(f"not an s3:// path: {path!r}")
    return match.group(1), match.group(2)


def error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code) if code else None


def _not_found(error: BaseException) -> bool:
    return error_code(error) in ("404", "NoSuchKey", "NotFound")


# --------------------------------------------------------------------------------------------
# Writing


class Upload(io.RawIOBase):
    """A writable stream that becomes one S3 object on `close()`: one PutObject when the bytes
    fit in a part, else a multipart upload whose parts go up from a thread pool while the
    caller writes on. `abort()` (or an error) leaves nothing behind."""

    def __init__(self, path: str, settings: S3Settings):
        super().__init__()
        self._bucket, self._key = split(path)
        self._settings = settings
        self._client = client(settings)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[concurrent.futures.Future] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # At most this many parts wait in memory (uploading or queued) besides the buffer.
        self._slots = threading.Semaphore(settings.upload_threads + 1)
        self._finished = False
        # A CRC32 per part, as boto3's transfer manager asks for unless botocore is told
        # `request_checksum_calculation = when_required` (for stores that reject checksums):
        # the store checks each part, and the object's checksum is made of the parts' (with
        # none named, a store may checksum the whole object again at completion).
        wanted = self._client.meta.config.request_checksum_calculation == "when_supported"
        self._checksum = {"ChecksumAlgorithm": PART_CHECKSUM} if wanted else {}

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self._finished:
            raise ValueError("write to a finished upload")
        view = memoryview(data).cast("B")
        part_bytes = self._settings.part_bytes
        space = part_bytes - len(self._buffer)
        if view.nbytes < space:
            self._buffer += view
            return view.nbytes
        # Whole parts straight from the caller's bytes: one copy per byte, however large
        # the write.
        self._buffer += view[:space]
        self._send_part(bytes(self._buffer))
        offset = space
        while view.nbytes - offset >= part_bytes:
            self._send_part(bytes(view[offset:offset + part_bytes]))
            offset += part_bytes
        self._buffer = bytearray(view[offset:])
        return view.nbytes

    def close(self) -> None:
        if self._finished:
            return super().close()
        try:
            if self._upload_id is None:
                self._client.put_object(Bucket=self._bucket, Key=self._key,
                                        Body=bytes(self._buffer))
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                parts = [future.result() for future in self._parts]
                self._complete(parts)
        except BaseException:
            self.abort()
            raise
        self._finish()
        super().close()

    def _complete(self, parts: list[dict]) -> None:
        try:
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": parts})
        except Exception as error:
            # A retry of a completion whose answer was lost finds the upload gone: the object
            # is there if its ETag is the one these parts make.
            if error_code(error) != "NoSuchUpload" or not self._stored_as(parts):
                raise

    def _stored_as(self, parts: list[dict]) -> bool:
        digests = b"".join(bytes.fromhex(part["ETag"].strip('"')) for part in parts)
        expected = f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'
        try:
            stored = self._client.head_object(Bucket=self._bucket, Key=self._key)["ETag"]
        except Exception:  # noqa: BLE001 - any failure here means "not known to be stored"
            return False
        return stored == expected

    def abort(self) -> None:
        """Drop what was written: no object appears, and no part stays stored."""
        if self._finished:
            return
        self._finish(cancel=True)
        if self._upload_id is not None:
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key,
                                                    UploadId=self._upload_id)
            # An abort that fails leaves an invisible upload for the next run's cleanup
            # (`abort_uploads`); the error that led here is the one to report.
            except Exception:  # noqa: BLE001
                pass
        super().close()

    def __del__(self):
        # io's finaliser would close(), which commits: an upload nobody closed is dropped.
        if not getattr(self, "_finished", True):
            try:
                self.abort()
            except Exception:  # noqa: BLE001 - nothing to report to at collection time
                pass

    def _finish(self, cancel: bool = False) -> None:
        self._finished = True
        self._buffer = bytearray()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)

    def _send_part(self, body: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, **self._checksum)["UploadId"]
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._settings.upload_threads, thread_name_prefix="s3-upload")
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise OSError(f"s3://{self._bucket}/{self._key}: more than {MAX_PARTS} parts; "
                          "raise --s3_part_size_mb")
        failed = next((f for f in self._parts if f.done() and f.exception()), None)
        if failed is not None:
            raise failed.exception()
        self._slots.acquire()
        self._parts.append(self._pool.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytes) -> dict:
        try:
            answer = self._client.upload_part(Bucket=self._bucket, Key=self._key,
                                              UploadId=self._upload_id, PartNumber=number,
                                              Body=body, **self._checksum)
        finally:
            self._slots.release()
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        if f"Checksum{PART_CHECKSUM}" in answer:
            part[f"Checksum{PART_CHECKSUM}"] = answer[f"Checksum{PART_CHECKSUM}"]
        return part


def create(path: str) -> Upload:
    return Upload(path, current_settings())


# --------------------------------------------------------------------------------------------
# Reading


class RangeReader(io.RawIOBase):
    """A seekable stream of one object's bytes. A connection that drops or stalls mid-body is
    reopened at the byte reached (the same version, by ETag), a few times with backoff, before
    the error reaches the reader; the first request's own retries are botocore's."""

    def __init__(self, path: str, settings: S3Settings):
        super().__init__()
        self._path = path
        self._bucket, self._key = split(path)
        self._client = client(settings)
        self._position = 0
        self._body = None
        self._size: int | None = None
        self._etag: str | None = None
        self._open_body()  # a missing object fails here, as an open should

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        position = max(0, base + offset)
        if position != self._position:
            self._drop_body()
            self._position = position
        return position

    def readinto(self, buffer) -> int:
        if self._position >= self._size:
            return 0
        view = memoryview(buffer).cast("B")
        for attempt in range(_STREAM_RETRIES + 1):
            try:
                if self._body is None:
                    self._open_body()
                data = self._body.read(len(view))
                if not data and self._position < self._size:
                    raise _Truncated(f"{self._path}: body ended at byte {self._position} of "
                                     f"{self._size}")
                break
            except transient_read_errors() as error:
                self._drop_body()
                if attempt == _STREAM_RETRIES:
                    raise OSError(f"reading {self._path} at byte {self._position}: "
                                  f"{error}") from None
                time.sleep(min(8.0, 0.25 * 2 ** attempt) * (0.5 + random.random()))
        view[:len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._drop_body()
        super().close()

    def _open_body(self) -> None:
        arguments = {"Bucket": self._bucket, "Key": self._key}
        if self._etag is not None:
            arguments["IfMatch"] = self._etag
        if self._position:
            arguments["Range"] = f"bytes={self._position}-"
        try:
            answer = self._client.get_object(**arguments)
        except Exception as error:
            if _not_found(error):
                raise FileNotFoundError(f"{self._path} does not exist") from None
            if error_code(error) == "InvalidRange" and self._size is not None:
                self._body = io.BytesIO(b"")  # at the end already
                return
            raise
        self._etag = self._etag or answer.get("ETag")
        if self._size is None:
            self._size = int(answer["ContentLength"])
        self._body = answer["Body"]

    def _drop_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass
            self._body = None


class _Truncated(OSError):
    pass


@functools.cache
def transient_read_errors() -> tuple[type[BaseException], ...]:
    """What a body under way fails with when the connection, not the object, is at fault
    (botocore is imported late: boto3 is the `aws` extra)."""
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import ProtocolError

    return (ConnectionClosedError, EndpointConnectionError, IncompleteReadError,
            ReadTimeoutError, ResponseStreamingError, ProtocolError, ConnectionError,
            TimeoutError, _Truncated)



def open_read(path: str) -> io.BufferedReader:
    return io.BufferedReader(RangeReader(path, current_settings()), buffer_size=MIB)


# --------------------------------------------------------------------------------------------
# Listing and deleting


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    path: str
    size: int
    version: str  # the ETag: what a rerun compares to know an input did not change


def list_matching(pattern: str) -> list[ObjectInfo]:
    """Objects whose keys match a glob (`*` within a folder, `**` across folders, as Beam's
    filesystems read it), from one listing of the prefix before the first wildcard."""
    bucket, key_pattern = split(pattern)
    wildcard = re.search(r"[*?\[]", key_pattern)
    prefix = key_pattern[:wildcard.start()] if wildcard else key_pattern
    matches = re.compile(FileSystem.translate_pattern(key_pattern)).fullmatch
    found = []
    pages = client(current_settings()).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    for page in pages:
        for entry in page.get("Contents", ()):
            if matches(entry["Key"]):
                found.append(ObjectInfo(f"s3://{bucket}/{entry['Key']}", int(entry["Size"]),
                                        entry["ETag"]))
    return sorted(found, key=lambda info: info.path)


def exists(path: str) -> bool:
    bucket, key = split(path)
    try:
        client(current_settings()).head_object(Bucket=bucket, Key=key)
    except Exception as error:
        if _not_found(error):
            return False
        raise
    return True


def delete(paths: list[str]) -> None:
    """Deletes in batches; a key that is not there is not an error (S3 says the same)."""
    by_bucket: dict[str, list[str]] = {}
    for path in paths:
        bucket, key = split(path)
        by_bucket.setdefault(bucket, []).append(key)
    s3 = client(current_settings())
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            answer = s3.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": key} for key in batch], "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(f"deleting s3://{bucket}/{first.get('Key')}: {first.get('Code')} "
                              f"({len(errors)} of {len(batch)} keys not deleted)")


def abort_uploads(folder: str) -> int:
    """Aborts the incomplete multipart uploads under `folder` (left by a process that was
    killed mid-upload, invisible but stored and billed); returns how many."""
    bucket, prefix = split(folder)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    s3 = client(current_settings())
    aborted = 0
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
        for upload in page.get("Uploads", ()):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
            aborted += 1
    return aborted


def check_writable(probe: str, attempts: int = 3) -> None:
    """Writes and deletes a small object with few retries: a store that cannot be written is
    reported at launch without the minute a worker's retry budget would take."""
    settings = dataclasses.replace(current_settings(), max_attempts=attempts)
    bucket, key = split(probe)
    s3 = client(settings)
    s3.put_object(Bucket=bucket, Key=key, Body=b"openwit\n")
    s3.delete_object(Bucket=bucket, Key=key)
