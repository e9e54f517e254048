"""`openwit demo --output s3://...` against a local S3 endpoint: the corpus, the training run,
its evaluation and the report all live in the bucket, the trainer's loader workers read the
shards from it, and nothing is left on this machine's disk."""

import io
import json
import os

import pytest
import torch

from helpers import bucket_objects
from openwit.pipeline.apps.cli import main

pytestmark = pytest.mark.slow

SECRET = "demo-secret-key-not-to-be-kept"


def test_the_demo_writes_everything_to_a_bucket(s3, tmp_path, monkeypatch, capfd):
    client, endpoint = s3
    # The store takes any secret; this one must end in no object and no printed line.
    client_flags = ["--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
                    "--s3_secret_access_key", SECRET, "--s3_region_name", "us-east-1"]
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--samples", "300", "--train-samples", "320",
                 "--port", "0", "--output", "s3://corpus/demo", *client_flags]) == 0

    stored = bucket_objects(client, "demo")
    tars = sorted(name for name in stored if name.startswith("corpus/shards/")
                  and name.endswith(".tar"))
    assert len(tars) >= 2
    sizes = json.loads(stored["corpus/shards/sizes.json"])
    stats = json.loads(stored["corpus/stats.json"])
    assert sum(sizes.values()) == stats["written"] > 0
    assert stats["accounting_problems"] == []
    checkpoint = torch.load(io.BytesIO(stored["run/checkpoints/latest.pt"]),
                            map_location="cpu", weights_only=True)
    assert checkpoint["step"] == checkpoint["total_steps"] > 0
    metrics = [json.loads(line) for line in stored["run/metrics.jsonl"].decode().splitlines()]
    assert metrics and metrics[-1]["step"] == checkpoint["step"]
    assert "tokenizer.json" in {name.rsplit("/", 1)[-1] for name in stored}
    results = json.loads(stored["run/eval.json"])
    assert results["retrieval"]["pairs"] > 0  # read from the held-out shard in the bucket
    assert set(results["zero_shot"]["by_templates"]) == {"single", "ensemble"}
    assert b"data:image/png;base64," in stored["report.html"]
    # Nothing is half-written, and the mini-web's temporary folder is gone.
    assert not [name for name in stored if name.endswith(".inprogress")]
    assert not client.list_multipart_uploads(Bucket="corpus", Prefix="demo/").get("Uploads")
    assert os.listdir(tmp_path) == []
    assert not [name for name, data in stored.items() if SECRET.encode() in data]
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "read back" in captured.out

    # `openwit eval` on its own, on the run folder and a shard in the bucket: its results go
    # beside the checkpoint there.
    client.delete_object(Bucket="corpus", Key="demo/run/eval.json")
    assert main(["eval", "--checkpoint", "s3://corpus/demo/run", "--retrieval-shards",
                 "s3://corpus/demo/" + tars[-1], *client_flags]) == 0
    again = json.loads(bucket_objects(client, "demo/run")["eval.json"])
    assert again["retrieval"] == results["retrieval"]
    assert os.listdir(tmp_path) == []
