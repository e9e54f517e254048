"""Crawl files -> shards end to end: WAT and WARC files of pages that show the mini-web's
images (`miniweb/crawl.py`) -> `openwit candidates` finds every (url, alt) pair once ->
`openwit build --wat` writes the shards a build from the same pairs as a list writes."""

import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openwit.pipeline.apps.cli import main
from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig
from openwit.pipeline.apps.miniweb.crawl import write_crawl_files
from openwit.pipeline.crawl.links import normalise

pytestmark = pytest.mark.slow
COMMON = ["--allow-network", "127.0.0.1/32,127.0.0.2/32", "--timeout", "2",
          "--samples-per-shard", "40"]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """(web, crawl files, the world's pairs as a candidate list)."""
    folder = tmp_path_factory.mktemp("crawl")
    config = WorldConfig(samples=150, seed=0, slow_seconds=3.0, eval_images_per_class=1,
                         hosts=2)
    with MiniWeb(config, folder / "web") as web:
        rows = pq.read_table(web.candidates_path).to_pylist()
        # What a page can show: an http(s) URL as a page would link it, and an alt text.
        pairs = sorted({(row["url"], row["caption"]) for row in rows
                        if row["url"] and row["caption"] and row["caption"].strip()
                        and normalise(row["url"]) == (row["url"], None)})
        files = write_crawl_files(pairs, folder / "files", files=2, seed=1)
        listed = folder / "pairs.parquet"
        pq.write_table(pa.table({"url": [u for u, _ in pairs],
                                 "caption": [c for _, c in pairs]}), listed)
        yield web, files, listed


def extracted(output) -> list[tuple[str, str]]:
    table = pq.read_table(sorted(glob.glob(os.path.join(output, "candidates-*.parquet"))))
    return sorted(zip(table.column("url").to_pylist(), table.column("caption").to_pylist()))


@pytest.mark.parametrize("mode", ["wat", "warc"])
def test_candidates_are_every_pair_the_pages_show_once(crawl, tmp_path, mode):
    web, files, _ = crawl
    paths = files.wat if mode == "wat" else files.warc
    output = tmp_path / "candidates"
    assert main(["candidates", f"--{mode}", str(paths[0]), f"--{mode}", str(paths[1]),
                 "--output", str(output)]) == 0
    assert extracted(output) == sorted(files.pairs)
    stats = json.loads((output / "stats.json").read_text())
    assert stats["files"] == 2 and stats["pages"] == files.pages
    assert stats["image_links"] == files.image_links
    assert stats["dropped_links"]["no_alt"] == files.without_alt
    assert stats["dropped_links"]["data_uri"] == stats["dropped_links"]["not_http"] == \
        files.pages
    assert stats["duplicate_pairs"] > 0 and stats["candidates"] == len(files.pairs)
    assert set(stats["read_problems"].values()) == {0}
    # The same command again over the same files: nothing to do.
    before = {p: p.stat().st_mtime_ns for p in output.iterdir()}
    assert main(["candidates", f"--{mode}", str(paths[0]), f"--{mode}", str(paths[1]),
                 "--output", str(output)]) == 0
    assert {p: p.stat().st_mtime_ns for p in output.iterdir()} == before


def test_build_from_wat_files_writes_the_shards_of_a_build_from_the_same_pairs(crawl, tmp_path):
    web, files, listed = crawl
    from_list, from_crawl = tmp_path / "list", tmp_path / "crawl"
    queries = ["--queries", str(web.queries_path)]
    assert main(["build", "--candidates", str(listed), *queries, "--output", str(from_list),
                 *COMMON]) == 0
    wat = str(files.wat[0].parent / "*.warc.wat.gz")
    assert main(["build", "--wat", wat, *queries, "--output", str(from_crawl), *COMMON]) == 0
    names = sorted(os.listdir(from_list / "shards"))
    assert any(name.endswith(".tar") for name in names)
    assert sorted(os.listdir(from_crawl / "shards")) == names
    for name in names:
        if name.endswith((".tar", ".parquet", "sizes.json")):
            assert (from_list / "shards" / name).read_bytes() == \
                (from_crawl / "shards" / name).read_bytes(), name
    stats = json.loads((from_crawl / "stats.json").read_text())
    assert stats["crawl"]["candidates"] == len(files.pairs)
    assert stats["accounting_problems"] == []
    assert extracted(from_crawl / "candidates") == sorted(files.pairs)


def test_build_takes_a_list_or_crawl_files_not_both(crawl, tmp_path, capsys):
    web, files, listed = crawl
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--candidates", str(listed), "--wat", str(files.wat[0]),
              "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "not both" in capsys.readouterr().err


def test_candidates_read_crawl_files_from_a_bucket_into_a_bucket(crawl, s3):
    """WAT files on s3:// are streamed through the storage layer (FastWARC reads the ranged,
    seekable stream), and the candidates go to s3:// too."""
    from openwit.pipeline.core import storage

    _, files, _ = crawl
    client, endpoint = s3
    for path in files.wat:
        client.upload_file(str(path), "corpus", f"crawl-e2e/wat/{path.name}")
    flags = ["--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
             "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1"]
    assert main(["candidates", "--wat", "s3://corpus/crawl-e2e/wat/*.warc.wat.gz",
                 "--output", "s3://corpus/crawl-e2e/out", *flags]) == 0
    found = []
    for path in storage.glob("s3://corpus/crawl-e2e/out/candidates-*.parquet"):
        table = storage.read_parquet(path, columns=["url", "caption"])
        found += zip(table.column("url").to_pylist(), table.column("caption").to_pylist())
    assert sorted(found) == sorted(files.pairs)
    stats = storage.read_json("s3://corpus/crawl-e2e/out/stats.json")
    assert stats["files"] == 2 and set(stats["read_problems"].values()) == {0}
