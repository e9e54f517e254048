"""`openwit build` reading its lists from and writing its corpus to s3:// (a local moto server),
through Beam's FileSystems and the standard --s3_* options."""

import json

import pytest
import webdataset as wds

from helpers import assert_accounted
from openwit.pipeline.apps.cli import main
from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig

pytestmark = pytest.mark.slow


def test_build_from_and_to_s3(s3, tmp_path):
    client, endpoint = s3
    config = WorldConfig(samples=120, seed=0, slow_seconds=5.0, eval_images_per_class=1)
    with MiniWeb(config, tmp_path / "web") as web:
        client.upload_file(str(web.candidates_path), "corpus", "lists/part-0.parquet")
        client.upload_file(str(web.queries_path), "corpus", "lists/queries.txt")
        assert main([
            "build", "--candidates", "s3://corpus/lists/part-*.parquet",
            "--queries", "s3://corpus/lists/queries.txt", "--output", "s3://corpus/out",
            "--allow-network", "127.0.0.1/32", "--timeout", "2", "--samples-per-shard", "40",
            "--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
            "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1",
        ]) == 0

    def read(key):
        return client.get_object(Bucket="corpus", Key=key)["Body"].read()

    keys = {o["Key"] for o in client.list_objects_v2(Bucket="corpus", Prefix="out/")["Contents"]}
    assert not any(key.endswith(".inprogress") for key in keys)
    sizes = json.loads(read("out/shards/sizes.json"))
    assert sizes and all(f"out/shards/{name}" in keys for name in sizes)
    for name, count in sizes.items():
        local = tmp_path / name
        local.write_bytes(read(f"out/shards/{name}"))
        samples = list(wds.WebDataset(str(local), shardshuffle=False))
        assert len(samples) == count and all({"jpg", "txt", "json"} <= set(s) for s in samples)
    stats = json.loads(read("out/stats.json"))
    assert stats["written"] == sum(sizes.values()) and stats["accounting_problems"] == []
    assert "out/query_counts.parquet" in keys
    assert any(key.startswith("out/failures/") for key in keys)
    copy = tmp_path / "copy"  # the whole corpus, read back, accounts for every candidate
    for key in keys:
        path = copy / key.removeprefix("out/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read(key))
    assert assert_accounted(copy)["input_rows"] == 120


@pytest.mark.parametrize("bucket, endpoint_of, expected", [
    ("nosuchbucket", lambda endpoint: endpoint, "no such bucket"),
    ("corpus", lambda endpoint: "http://127.0.0.1:9", "cannot connect to the endpoint"),
])
def test_an_output_that_cannot_be_written_is_one_line_before_any_download(
        s3, tmp_path, capsys, bucket, endpoint_of, expected):
    _, endpoint = s3
    config = WorldConfig(samples=120, seed=0, slow_seconds=5.0, eval_images_per_class=1)
    with MiniWeb(config, tmp_path / "web") as web:
        with pytest.raises(SystemExit) as exit_info:
            main(["build", "--candidates", str(web.candidates_path),
                  "--queries", str(web.queries_path), "--output", f"s3://{bucket}/out",
                  "--allow-network", "127.0.0.1/32", "--timeout", "2",
                  "--s3_endpoint_url", endpoint_of(endpoint), "--s3_access_key_id", "test",
                  "--s3_secret_access_key", "SENTINEL-SECRET", "--s3_region_name", "us-east-1"])
        peaks = web.peak_requests_in_flight()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("openwit build: error: cannot write to ")
    assert f"bucket '{bucket}'" in lines[0] and expected in lines[0]
    assert "SENTINEL-SECRET" not in err
    assert set(peaks.values()) == {0}  # the mini-web was never asked for anything
