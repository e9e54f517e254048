"""`openwit build` to s3:// through a store that throttles, drops connections and is slow
(tests/fault_proxy.py in front of moto), and killed with -9 mid-crawl, mid-upload and while
writing its summary: every run ends with the shards of a clean build, byte for byte."""

import signal
import subprocess
import sys
import re
import time

import pytest

from fault_proxy import FaultPlan, FaultProxy
from helpers import bucket_objects
from openwit.pipeline.apps.cli import main
from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig

pytestmark = pytest.mark.slow

COMPARED = (".tar", ".parquet", "sizes.json")


def build_args(web, output: str, endpoint: str) -> list[str]:
    return ["build", "--candidates", str(web.candidates_path), "--queries",
            str(web.queries_path), "--output", output, "--allow-network", "127.0.0.1/32",
            "--timeout", "2", "--samples-per-shard", "30",
            "--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
            "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1"]


def corpus_files(client, prefix: str) -> dict[str, bytes]:
    """name -> bytes of the shards, their metadata and sizes.json, and the failures."""
    return {name: body for name, body in bucket_objects(client, prefix).items()
            if name.startswith(("shards/", "failures/shard-")) and name.endswith(COMPARED)}


@pytest.fixture(scope="module")
def clean_build(s3, tmp_path_factory):
    """(web, the shards of a clean build): built once for the module's tests."""
    client, endpoint = s3
    config = WorldConfig(samples=90, seed=3, slow_seconds=3.0, eval_images_per_class=1)
    with MiniWeb(config, tmp_path_factory.mktemp("web")) as web:
        assert main(build_args(web, "s3://corpus/s3-faults-clean", endpoint)) == 0
        clean = corpus_files(client, "s3-faults-clean")
        assert sum(name.endswith(".tar") for name in clean) >= 2
        yield web, clean


@pytest.fixture
def world(s3, clean_build, request):
    """(web, client, endpoint, the shards of a clean build, a folder for this test). The
    folder is named after the test: the proxy's faults are seeded by the paths they hit."""
    client, endpoint = s3
    folder = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    web, clean = clean_build
    return web, client, endpoint, clean, folder


def test_a_build_through_a_faulty_store_writes_the_same_shards(world):
    web, client, endpoint, clean, folder = world
    plan = FaultPlan(seed=16, slow_down=0.15, reset=0.05, reset_mid_upload=0.1, delay=0.1,
                     delay_seconds=0.3)
    with FaultProxy(endpoint, plan) as proxy:
        assert main(build_args(web, f"s3://corpus/{folder}/faulty", proxy.url)) == 0
        faults = proxy.faults
    assert faults["slow_down"] and faults["reset"] + faults["reset_mid_upload"], faults
    assert corpus_files(client, f"{folder}/faulty") == clean
    uploads = client.list_multipart_uploads(Bucket="corpus", Prefix=folder).get("Uploads", [])
    assert uploads == []


def shard_upload(method: str, path: str, query: str) -> bool:
    return method in ("PUT", "POST") and "/shards/" in path and path.endswith(".tar")


def summary_write(method: str, path: str, query: str) -> bool:
    return method in ("PUT", "POST") and path.endswith("/shards/sizes.json")


def run_killed(web, output: str, endpoint: str, when) -> None:
    """Starts the build in a process of its own and kills it with -9 when `when()` is true."""
    process = subprocess.Popen([sys.executable, "-m", "openwit.pipeline.apps.cli",
                                *build_args(web, output, endpoint)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not when():
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


@pytest.mark.parametrize("kill_point", ["mid-crawl", "mid-upload of a shard",
                                        "while writing the summary"])
def test_a_build_killed_and_rerun_writes_the_same_shards(world, kill_point):
    web, client, endpoint, clean, folder = world
    output = f"s3://corpus/{folder}/killed"
    with FaultProxy(endpoint) as proxy:
        if kill_point == "mid-crawl":
            crawled = web.requests_seen()
            run_killed(web, output, proxy.url, lambda: web.requests_seen() > crawled + 20)
        else:
            held = proxy.hold_when(shard_upload if "shard" in kill_point else summary_write)
            run_killed(web, output, proxy.url, held.is_set)
    partial = corpus_files(client, f"{folder}/killed")
    assert all(clean.get(name) == data for name, data in partial.items())  # nothing half-made
    assert main(build_args(web, output, endpoint)) == 0
    assert corpus_files(client, f"{folder}/killed") == clean
    assert client.list_multipart_uploads(Bucket="corpus", Prefix=folder).get("Uploads", []) == []

