"""gs:// through Beam's GCS filesystem, against a GCS emulator on 127.0.0.1
(gcp-storage-emulator, which Beam's client reaches through STORAGE_EMULATOR_HOST): the storage
layer's operations, a missing bucket, and `openwit build --output gs://...` writing the shards a
local build writes, then ending at once when rerun."""

import os

import pytest

from openwit.pipeline.apps.cli import main
from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig
from openwit.pipeline.core import storage

pytestmark = pytest.mark.slow

COMPARED = (".tar", ".parquet", "sizes.json")


def test_storage_round_trips_on_gcs(gcs):
    folder = "gs://corpus/round-trip"
    big = os.urandom(9 * 1024 * 1024 + 7)  # several chunks of Beam's resumable upload
    storage.write_bytes_atomic(f"{folder}/a/big.bin", big)
    storage.write_json_atomic(f"{folder}/a/small.json", {"b": 1, "a": [2]})
    assert storage.read_bytes(f"{folder}/a/big.bin") == big
    assert storage.read_json(f"{folder}/a/small.json") == {"a": [2], "b": 1}
    with storage.open_read(f"{folder}/a/big.bin") as stream:
        stream.seek(8 * 1024 * 1024)
        assert stream.read(16) == big[8 * 1024 * 1024:8 * 1024 * 1024 + 16]
    infos = storage.glob_info(f"{folder}/**")
    small = len(storage.read_bytes(f"{folder}/a/small.json"))
    assert [(i.path, i.size) for i in infos] == [(f"{folder}/a/big.bin", len(big)),
                                                 (f"{folder}/a/small.json", small)]
    assert all(i.version for i in infos)
    # No temporary name is left by a write, and one that a killed run left is removed.
    storage.write_bytes_atomic(f"{folder}/a/killed.tar{storage.TEMPORARY_SUFFIX}", b"partial")
    assert storage.remove_leftovers(folder) == 1
    assert storage.glob(f"{folder}/**") == [f"{folder}/a/big.bin", f"{folder}/a/small.json"]
    # A writer that raises leaves the old version readable, and no new name.
    with pytest.raises(RuntimeError):
        with storage.create_atomic(f"{folder}/a/small.json") as f:
            f.write(b"half a file")
            raise RuntimeError("killed mid-write")
    assert storage.read_json(f"{folder}/a/small.json") == {"a": [2], "b": 1}
    storage.check_writable(folder)
    storage.delete([f"{folder}/a/big.bin", f"{folder}/a/missing"])
    assert not storage.exists(f"{folder}/a/big.bin") and storage.exists(f"{folder}/a/small.json")
    assert storage.glob(f"{folder}/**") == [f"{folder}/a/small.json"]


def test_a_missing_gcs_bucket_is_one_line_before_any_download(gcs, tmp_path, capsys):
    config = WorldConfig(samples=120, seed=0, slow_seconds=5.0, eval_images_per_class=1)
    with MiniWeb(config, tmp_path / "web") as web:
        with pytest.raises(SystemExit) as exit_info:
            main(["build", "--candidates", str(web.candidates_path),
                  "--queries", str(web.queries_path), "--output", "gs://no-such-bucket/out",
                  "--allow-network", "127.0.0.1/32", "--timeout", "2"])
        peaks = web.peak_requests_in_flight()
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("openwit build: error: cannot write to "), lines
    assert "bucket 'no-such-bucket'" in lines[0]
    assert set(peaks.values()) == {0}  # the mini-web was never asked for anything


def gcs_files(prefix: str) -> dict[str, bytes]:
    return {path.removeprefix(prefix + "/"): storage.read_bytes(path)
            for path in storage.glob(f"{prefix}/**")
            if path.removeprefix(prefix + "/").startswith(("shards/", "failures/shard-"))
            and path.endswith(COMPARED)}


def local_files(folder) -> dict[str, bytes]:
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), folder)
            if relative.startswith(("shards/", "failures/shard-")) and name.endswith(COMPARED):
                files[relative] = open(os.path.join(root, name), "rb").read()
    return files


def test_a_build_to_gcs_writes_a_local_builds_shards_and_reruns_at_once(gcs, tmp_path):
    config = WorldConfig(samples=90, seed=3, slow_seconds=3.0, eval_images_per_class=1)
    with MiniWeb(config, tmp_path / "web") as web:
        def build(output):
            return main(["build", "--candidates", str(web.candidates_path), "--queries",
                         str(web.queries_path), "--output", output,
                         "--allow-network", "127.0.0.1/32", "--timeout", "2",
                         "--samples-per-shard", "30"])

        assert build(str(tmp_path / "local")) == 0
        assert build("gs://corpus/build") == 0
        written = gcs_files("gs://corpus/build")
        assert sum(name.endswith(".tar") for name in written) >= 2
        assert written == local_files(tmp_path / "local")
        assert not storage.glob(f"gs://corpus/build/**{storage.TEMPORARY_SUFFIX}")
        stats = storage.read_bytes("gs://corpus/build/stats.json")

        # The same command again: stats.json names the inputs' versions and every shard is
        # there, so nothing is downloaded and nothing is rewritten.
        requests = web.requests_seen()
        assert build("gs://corpus/build") == 0
        assert web.requests_seen() == requests
        assert storage.read_bytes("gs://corpus/build/stats.json") == stats
        # A changed input (here: rewritten, so its version changed) runs the job again; it
        # keeps the completed shards, and stats.json records the new version.
        web.candidates_path.write_bytes(web.candidates_path.read_bytes())
        assert build("gs://corpus/build") == 0
        assert storage.read_bytes("gs://corpus/build/stats.json") != stats
        assert gcs_files("gs://corpus/build") == written
