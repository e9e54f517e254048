"""The demo's build flags and its ablation pieces: an unbalanced subset of the pool, head and
tail classes."""

import argparse
import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from openwit.pipeline.core.layout import SAMPLE_FIELDS
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.jobs.build import add_build_flags, build_config
from openwit.pipeline.shards.writer import encode_tar
from openwit.pipeline.apps.demo import (
    DemoConfig,
    arm_summary,
    build_argv,
    draw_unbalanced,
    format_ablation,
    head_and_tail,
    shard_sizes,
    subset_shards,
)


def pool_sample(key):
    """A sample as the shard writer takes it: every metadata field, and the JPEG bytes."""
    metadata = {field: None for field in SAMPLE_FIELDS}
    metadata.update(key=key, url=f"http://a.test/{key}.jpg", caption=f"caption {key}",
                    queries=["circle"], language="en", language_prob=0.99, sha256=key * 4)
    return {**metadata, "jpg": key.encode() * 3}


def write_pool(folder, keys_per_shard):
    folder.mkdir(parents=True)
    sizes = {}
    for index, keys in enumerate(keys_per_shard):
        name = f"{index:06d}"
        (folder / f"{name}.tar").write_bytes(encode_tar([pool_sample(key) for key in keys]))
        pq.write_table(pa.table({"key": keys}), folder / f"{name}.parquet")
        sizes[f"{name}.tar"] = len(keys)
    (folder / "sizes.json").write_text(json.dumps(sizes))


def test_unbalanced_subset_is_a_seeded_uniform_draw_copied_whole(tmp_path):
    pool = tmp_path / "pool"
    keys = [f"{i:016x}" for i in range(50)]
    write_pool(pool, [keys[:20], keys[20:35], keys[35:]])
    drawn = draw_unbalanced(str(pool), 12, seed=1)
    assert len(drawn) == 12 and drawn <= set(keys)
    assert drawn == draw_unbalanced(str(pool), 12, seed=1)
    assert drawn != draw_unbalanced(str(pool), 12, seed=2)

    out = tmp_path / "unbalanced"
    assert subset_shards(str(pool), drawn, str(out), samples_per_shard=5) == 12
    assert shard_sizes(str(out)) == {"000000.tar": 5, "000001.tar": 5, "000002.tar": 2}
    copied = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False))
    assert {s["__key__"] for s in copied} == drawn
    for sample in copied:  # every file of a sample comes along, unchanged
        expected = pool_sample(sample["__key__"])
        assert sample["jpg"] == expected["jpg"]
        assert sample["txt"] == expected["caption"].encode()
        assert json.loads(sample["json"]) == {k: v for k, v in expected.items() if k != "jpg"}
    # Written by the pipeline's own shard writer: the same bytes as writing those samples.
    in_order = sorted(drawn, key=lambda key: keys.index(key))
    assert (out / "000000.tar").read_bytes() == encode_tar(
        [pool_sample(key) for key in in_order[:5]])


def test_head_and_tail_split_classes_by_pool_matches(tmp_path):
    rows = [{"query_id": i, "query": q, "matched": n, "kept": n}
            for i, (q, n) in enumerate([("circle", 900), ("square", 400), ("star", 90),
                                        ("arrow", 30), ("red", 5000)])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "query_counts.parquet")
    head, tail = head_and_tail(["arrow", "circle", "square", "star"], str(tmp_path))
    assert head == ["circle", "square"] and tail == ["star", "arrow"]


def test_arm_summary_averages_per_class_accuracy_over_head_and_tail():
    results = {"zero_shot": {"chance": 0.25, "by_templates": {
        "single": {"top1": 0.1, "per_class": {}},
        "ensemble": {"top1": 0.5, "per_class": {"a": 1.0, "b": 0.5, "c": 0.0, "d": None}}}}}
    summary = arm_summary(results, head=["a", "b"], tail=["c", "d"], samples=40)
    assert summary == {"top1": 0.5, "head_top1": 0.75, "tail_top1": 0.0, "samples": 40,
                       "chance": 0.25}
    text = format_ablation({"arms": {"balanced": summary}, "head_classes": ["a", "b"],
                            "tail_classes": ["c", "d"]})
    assert "balanced" in text and "75.0%" in text and "tail classes: c, d" in text


@pytest.mark.slow
def test_demo_ablation_runs_both_arms(tmp_path):
    from openwit.pipeline.apps.cli import main

    assert main(["demo", "--samples", "300", "--train-samples", "320", "--no-train",
                 "--ablation", "balance", "--port", "0", "--output", str(tmp_path)]) == 0
    ablation = json.loads((tmp_path / "ablation.json").read_text())
    assert set(ablation["arms"]) == {"balanced", "unbalanced"}
    balanced, unbalanced = ablation["arms"]["balanced"], ablation["arms"]["unbalanced"]
    assert balanced["samples"] == unbalanced["samples"] > 0
    assert shard_sizes(str(tmp_path / "unbalanced" / "shards"))
    assert sum(shard_sizes(str(tmp_path / "unbalanced" / "shards")).values()) == \
        balanced["samples"]
    assert len(ablation["head_classes"]) == len(ablation["tail_classes"]) == 5
    for arm in (balanced, unbalanced):
        assert 0 <= arm["top1"] <= 1
    assert "ablation" in (tmp_path / "report.html").read_text()


def test_the_demo_builds_with_flags_a_build_accepts(tmp_path):
    """The demo's build: only 127.0.0.1 let through, robots.txt read, the evaluation set
    excluded, and the per-host cap lifted to the thread count for its own one-host server."""
    web = SimpleNamespace(candidates_path=tmp_path / "c.parquet",
                          queries_path=tmp_path / "q.txt", eval_dir=tmp_path / "eval")
    parser = argparse.ArgumentParser()
    add_build_flags(parser)
    argv = build_argv(DemoConfig(), web, str(tmp_path), 10)
    images = build_config(parser.parse_args(argv)).images
    assert images.download.max_per_host == images.download.threads == DownloadConfig().threads
    assert images.download.robots_txt
    assert images.download.allowed_networks == ("127.0.0.1/32",)
    assert images.dedup.exclude_images == (str(web.eval_dir),)
