"""The storage layer on s3:// (a local moto server, reached only over HTTP as AWS would be):
what it writes, how it commits, what it leaves behind and how it globs, against the same
calls on a local folder."""

import os
import random
import signal
import subprocess
import sys
import uuid

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from openwit.pipeline.core import s3, storage

MIB = 1024 * 1024


def s3_options(endpoint: str, *extra: str) -> PipelineOptions:
    return PipelineOptions(["--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
                            "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1",
                            *extra])


@pytest.fixture
def store(s3):
    """(boto3 client, a folder of its own): moto keeps one store per process, shared by every
    server a test session starts."""
    client, endpoint = s3
    FileSystems.set_options(s3_options(endpoint, "--s3_part_size_mb", "5",
                                       "--s3_upload_threads", "3"))
    yield client, f"t{uuid.uuid4().hex[:12]}"
    FileSystems.set_options(PipelineOptions([]))


def uploads(client, folder) -> list:
    return client.list_multipart_uploads(Bucket="corpus", Prefix=folder).get("Uploads", [])


@pytest.mark.parametrize("size", [0, 1, 5 * MIB - 1, 5 * MIB, 12 * MIB + 7])
def test_written_bytes_read_back_identical(store, size):
    client, folder = store
    data = random.Random(size).randbytes(size)
    with storage.create_atomic(f"s3://corpus/{folder}/a/shard.tar") as stream:
        for start in range(0, size, 300_000):  # a tar writer's many small writes
            stream.write(data[start:start + 300_000])
    assert client.get_object(Bucket="corpus", Key=f"{folder}/a/shard.tar")["Body"].read() == data
    assert storage.read_bytes(f"s3://corpus/{folder}/a/shard.tar") == data
    assert uploads(client, folder) == []


def test_an_error_while_writing_leaves_nothing_and_keeps_the_old_version(store):
    client, folder = store
    storage.write_bytes_atomic(f"s3://corpus/{folder}/a/shard.tar", b"the complete old shard")
    with pytest.raises(RuntimeError):
        with storage.create_atomic(f"s3://corpus/{folder}/a/shard.tar") as stream:
            stream.write(os.urandom(11 * MIB))  # two parts already on their way
            raise RuntimeError("the writer failed")
    assert storage.read_bytes(f"s3://corpus/{folder}/a/shard.tar") == b"the complete old shard"
    assert uploads(client, folder) == []


KILLED_WRITER = """
import os, signal, sys
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from openwit.pipeline.core import storage
FileSystems.set_options(PipelineOptions(sys.argv[2:]))
with storage.create_atomic(sys.argv[1]) as stream:
    stream.write(os.urandom(6 * 1024 * 1024))  # one part sent, the rest buffered
    stream._pool.shutdown(wait=True)  # the part has reached the store
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_upload_is_invisible_and_the_next_run_removes_it(store, s3):
    client, folder = store
    shard = f"s3://corpus/{folder}/out/shards/000000.tar"
    flags = ["--s3_endpoint_url", s3[1], "--s3_access_key_id", "test",
             "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1",
             "--s3_part_size_mb", "5"]
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, shard, *flags], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert len(uploads(client, folder)) == 1
    assert not storage.exists(shard)
    assert storage.glob(f"s3://corpus/{folder}/out/**") == []
    # A temporary object an older version wrote, and one outside the output.
    client.put_object(Bucket="corpus", Key=f"{folder}/out/stats.json.inprogress", Body=b"{")
    client.put_object(Bucket="corpus", Key=f"{folder}-elsewhere/x.inprogress", Body=b"{")
    assert storage.remove_leftovers(f"s3://corpus/{folder}/out") == 2
    assert uploads(client, folder) == []
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="corpus", Prefix=folder)["Contents"]]
    assert keys == [f"{folder}-elsewhere/x.inprogress"]  # not the output's to remove


def test_reads_seek_like_a_file(store):
    client, folder = store
    data = random.Random(1).randbytes(3 * MIB)
    storage.write_bytes_atomic(f"s3://corpus/{folder}/a/b.bin", data)
    with storage.open_read(f"s3://corpus/{folder}/a/b.bin") as stream:
        assert stream.read(10) == data[:10]
        stream.seek(2 * MIB + 5)
        assert stream.read(7) == data[2 * MIB + 5:2 * MIB + 12]
        stream.seek(-3, os.SEEK_END)
        assert stream.read() == data[-3:]
        assert stream.read() == b""
    with pytest.raises(FileNotFoundError):
        storage.open_read(f"s3://corpus/{folder}/a/missing.bin")


TREE = ["out/stats.json", "out/shards/000000.tar", "out/shards/000000.parquet",
        "out/shards/000001.tar", "out/shards/sizes.json", "out/failures/shard-000000.parquet",
        "out/failures/text-00000-of-00001.parquet", "out/curated.parquet/part-0.parquet",
        "out/a[b]/odd name.txt", "outside.txt"]
PATTERNS = ["out/*", "out/shards/*", "out/shards/*.tar", "out/shards/00000?.tar",
            "out/**.parquet", "out/**", "out/failures/shard-*", "out/shards/000000.tar",
            "out/shards/missing.tar", "out/sh*/0*", "out/*/*.parquet", "out/**/sizes.json"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_glob_matches_what_beam_matches_on_a_local_folder(store, tmp_path, pattern):
    client, folder = store
    for key in TREE:
        client.put_object(Bucket="corpus", Key=f"{folder}/{key}", Body=key.encode())
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(key.encode())
    local = [path.removeprefix(str(tmp_path) + "/")
             for path in storage.glob(str(tmp_path / pattern))]
    base = f"s3://corpus/{folder}/"
    remote = [path.removeprefix(base) for path in storage.glob(base + pattern)]
    assert remote == local
    infos = storage.glob_info(base + pattern)
    assert [i.size for i in infos] == [len(p) for p in remote]
    assert all(i.version for i in infos)


def test_delete_takes_many_keys_and_missing_ones(store):
    client, folder = store
    keys = [f"{folder}/d/{i:05d}" for i in range(1203)]
    for key in keys[:5]:
        client.put_object(Bucket="corpus", Key=key, Body=b"x")
    storage.delete([f"s3://corpus/{key}" for key in keys])
    assert storage.glob(f"s3://corpus/{folder}/d/*") == []


def test_one_client_per_store_and_process(store):
    assert s3.client(s3.current_settings()) is s3.client(s3.current_settings())
    settings = s3.S3Settings.of(PipelineOptions([
        "--s3_access_key_id", "SENTINEL-KEY", "--s3_secret_access_key", "SENTINEL-SECRET",
        "--s3_session_token", "SENTINEL-TOKEN"]))
    assert "SENTINEL" not in repr(settings)  # what a log or a traceback could show


@pytest.mark.parametrize("calculation, sent", [("when_supported", "CRC32"),
                                               ("when_required", None)])
def test_parts_carry_the_checksum_botocore_is_told_to_send(store, monkeypatch, calculation,
                                                           sent):
    """CRC32 per part by default, as boto3's transfer manager does; none for a store that
    rejects checksums, when botocore is told `when_required`."""
    client, folder = store
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", calculation)
    s3.client.cache_clear()  # the setting is read when a client is made
    try:
        ours = s3.client(s3.current_settings())
        asked = []
        ours.meta.events.register(
            "provide-client-params.s3.*",
            lambda params, model, **_: asked.append((model.name,
                                                     params.get("ChecksumAlgorithm"))))
        data = os.urandom(11 * MIB)
        storage.write_bytes_atomic(f"s3://corpus/{folder}/c.tar", data)
    finally:
        s3.client.cache_clear()
    assert storage.read_bytes(f"s3://corpus/{folder}/c.tar") == data
    assert [name for name, _ in asked] == ["CreateMultipartUpload", "UploadPart", "UploadPart",
                                           "UploadPart", "CompleteMultipartUpload"]
    assert {checksum for name, checksum in asked if name != "CompleteMultipartUpload"} == {sent}
