"""No credential passed as a filesystem flag ever leaves memory: a sentinel secret goes through
every command that takes Beam's filesystem flags, then every file written (checkpoints
included, as bytes) and everything printed is searched for it."""

from __future__ import annotations

import glob
import os

import pytest

from helpers import assert_accounted
from openwit.pipeline.apps.cli import main
from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig

pytestmark = pytest.mark.slow

SENTINELS = ("SENTINELKEYID7f3a", "SENTINELSECRET9b1c", "SENTINELTOKEN4d2e")
SECRET_FLAGS = ["--s3_access_key_id", SENTINELS[0], "--s3_secret_access_key", SENTINELS[1],
                "--s3_session_token", SENTINELS[2], "--s3_region_name", "us-east-1"]


def files_holding_a_sentinel(folder) -> list[str]:
    found = []
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            found += [f"{path}: {s}" for s in SENTINELS if s.encode() in data]
    return found


def test_a_sentinel_secret_appears_in_no_output(tmp_path, capfd):
    pytest.importorskip("torch")
    world = WorldConfig(samples=200, seed=0, slow_seconds=2.0, eval_images_per_class=2)
    with MiniWeb(world, tmp_path / "web") as web:
        common = ["--allow-network", "127.0.0.1/32", "--timeout", "2", "--samples-per-shard", "40"]
        corpus = tmp_path / "corpus"
        assert main(["build", "--candidates", str(web.candidates_path), "--queries",
                     str(web.queries_path), "--output", str(corpus), *common,
                     *SECRET_FLAGS]) == 0
        curated = tmp_path / "curated"
        assert main(["curate", "--candidates", str(web.candidates_path), "--queries",
                     str(web.queries_path), "--output", str(curated), *SECRET_FLAGS]) == 0
        assert main(["download", "--curated", str(curated), "--output", str(curated), *common,
                     *SECRET_FLAGS]) == 0
    assert main(["queries", "--wordnet", "none", "--wordfreq-min-zipf", "5", "--output",
                 str(tmp_path / "queries"), *SECRET_FLAGS]) == 0
    run = tmp_path / "run"
    assert main(["train", "--shards", str(corpus / "shards"), "--output", str(run),
                 "--model", "tiny", "--batch-size", "8", "--epoch-samples", "16",
                 "--workers", "1", "--no-progress", "--vocab-size", "300",
                 *SECRET_FLAGS]) == 0
    assert main(["eval", "--checkpoint", str(run), "--retrieval-shards", str(corpus / "shards"),
                 "--retrieval-samples", "20", *SECRET_FLAGS]) == 0
    assert main(["report", str(corpus), "--run", str(run), *SECRET_FLAGS]) == 0
    assert main(["demo", "--quick", "--no-train", "--samples", "100", "--port", "0",
                 "--output", str(tmp_path / "demo"), *SECRET_FLAGS]) == 0

    captured = capfd.readouterr()
    printed = captured.out + captured.err
    assert not [s for s in SENTINELS if s in printed], "a secret was printed"
    assert not files_holding_a_sentinel(tmp_path)
    assert os.path.exists(run / "checkpoints" / "latest.pt")  # searched above, as bytes
    assert_accounted(corpus)
    assert_accounted(curated)


def test_the_search_finds_a_planted_secret(tmp_path):
    # The check above must be able to fail: a file holding a sentinel is found.
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "config.bin").write_bytes(b"\x00" + SENTINELS[1].encode() + b"\x00")
    assert files_holding_a_sentinel(tmp_path) == [f"{tmp_path / 'deep' / 'config.bin'}: "
                                                  f"{SENTINELS[1]}"]
