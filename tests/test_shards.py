"""Shard planning, image dedup, shard writing and the corpus summary, each in a TestPipeline."""

import io
import json

import apache_beam as beam
import pyarrow.parquet as pq
import webdataset as wds
from apache_beam.testing.util import assert_that, equal_to

from helpers import beam_test_pipeline, jpeg_bytes
from openwit.pipeline.core import storage
from openwit.pipeline.core.layout import FAILURE_SCHEMA, shard_paths
from openwit.pipeline.core.records import Reason, Stage, failure as failure_record, sample_key
from openwit.pipeline.images.image_dedup import FindImageDuplicates
from openwit.pipeline.shards.plan import (
    KeyFingerprint,
    PlanShards,
    number_of_shards,
    read_completed_shards,
    shard_of,
)
from openwit.pipeline.shards.writer import StageImages, WriteShards, encode_tar
from openwit.pipeline.shards.summary import (
    check_accounting,
    check_curated,
    corpus_stats,
    stale_shard_files,
    text_stage_entries,
)


def sample(i, image=None):
    url = f"http://a.test/{i}.jpg"
    caption = f"a red circle number {i}"
    data = image if image is not None else jpeg_bytes(color=(i, 0, 0), size=(64, 64))
    return {
        "key": sample_key(url, caption), "url": url, "caption": caption,
        "queries": ["circle", "red"], "language": "en", "language_prob": 0.99,
        "jpg": data, "width": 64, "height": 64, "original_width": 64, "original_height": 64,
        "original_bytes": len(data), "sha256": f"sha-{i}", "phash": "0" * 16,
        "phash_crops": ["1" * 16, "2" * 16],
        "colours": ["80" * 27] * 3,
    }


def candidate(i):
    s = sample(i)
    return {k: s[k] for k in ("key", "url", "caption", "queries")}


def test_number_of_shards_and_assignment_are_stable():
    assert number_of_shards(0, 10) == 1
    assert number_of_shards(10, 10) == 1
    assert number_of_shards(11, 10) == 2
    keys = [candidate(i)["key"] for i in range(200)]
    assert [shard_of(k, 4) for k in keys] == [shard_of(k, 4) for k in keys]
    assert set(shard_of(k, 4) for k in keys) == {0, 1, 2, 3}


def test_plan_skips_only_shards_completed_with_the_same_plan():
    candidates = [candidate(i) for i in range(40)]

    def plan_of(shard):
        fingerprint = KeyFingerprint()
        accumulator = fingerprint.create_accumulator()
        for c in candidates:
            if shard_of(c["key"], 4) == shard:
                accumulator = fingerprint.add_input(accumulator, c["key"])
        return {**fingerprint.extract_output(accumulator), "num_shards": 4}

    first = {shard: plan_of(shard) for shard in range(4)}
    with beam_test_pipeline() as p:
        plan = p | beam.Create(candidates) | PlanShards(10, {})
        assert_that(plan.pending_plans, equal_to(list(first.items())))
    completed = {0: {"shard": 0, "plan": first[0], "written": 7},
                 1: {"shard": 1, "plan": {**first[1], "fingerprint": "different"}},
                 9: {"shard": 9, "plan": first[2]}}
    with beam_test_pipeline() as p:
        plan = p | beam.Create(candidates) | PlanShards(10, completed)
        assert_that(plan.num_shards, equal_to([4]), label="num")
        assert_that(plan.reused | "reused" >> beam.Keys(), equal_to([0]), label="reused")
        assert_that(plan.pending_plans | "pending" >> beam.Keys(), equal_to([1, 2, 3]),
                    label="pending plans")
        assert_that(plan.pending | beam.Map(lambda sc: sc[1]["key"]),
                    equal_to([c["key"] for c in candidates if shard_of(c["key"], 4) != 0]),
                    label="pending")


def duplicate_record(loser, winner):
    return failure_record({"key": loser}, Stage.DEDUP_IMAGE, Reason.DUPLICATE_IMAGE,
                          f"same image bytes as {winner}")


def test_find_image_duplicates_keeps_the_smallest_key_across_runs():
    same = jpeg_bytes()
    new = [(0, {**sample(1, same), "sha256": "dup"}), (1, {**sample(2, same), "sha256": "dup"}),
           (1, {**sample(3), "sha256": "unique"})]
    smallest_new = min(s["key"] for _, s in new[:2])
    with beam_test_pipeline() as p:
        losers = p | "new" >> beam.Create(new) | "no history" >> FindImageDuplicates()
        loser = max(new[:2], key=lambda item: item[1]["key"])
        assert_that(losers, equal_to([(loser[0], duplicate_record(loser[1]["key"],
                                                                   smallest_new))]))

    # An earlier run wrote the same image under a smaller key: both new ones lose to it.
    with beam_test_pipeline() as p:
        written = p | "written" >> beam.Create([("dup", "0000000000000000", 5)])
        losers = p | "new" >> beam.Create(new) | FindImageDuplicates(written)
        assert_that(losers, equal_to([(shard, duplicate_record(s["key"], "0000000000000000"))
                                      for shard, s in new[:2]]))


def test_tar_is_deterministic_and_readable_by_webdataset(tmp_path):
    samples = [sample(i) for i in range(5)]
    tar = encode_tar(samples)
    assert tar == encode_tar(samples)
    path = tmp_path / "000000.tar"
    path.write_bytes(tar)
    read = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in read] == [s["key"] for s in samples]
    for original, got in zip(samples, read):
        assert set(got) >= {"jpg", "txt", "json"}
        assert got["jpg"] == original["jpg"]
        assert got["txt"].decode() == original["caption"]
        meta = json.loads(got["json"])
        assert meta["key"] == original["key"] and meta["queries"] == ["circle", "red"]
        assert "." not in meta["key"]


def test_write_shards_commits_tar_parquet_failures_and_stats(tmp_path):
    output = str(tmp_path)
    shard0 = [sample(i) for i in (3, 1, 2)]
    dup = sample(4)
    plan = {"fingerprint": "f", "candidates": 5, "num_shards": 2}
    failure = {"key": "k5", "url": "http://a.test/5.jpg", "caption": "c", "stage": Stage.DOWNLOAD,
               "reason": Reason.HTTP_NOT_FOUND, "detail": "HTTP 404"}
    with beam_test_pipeline() as p:
        stats = {
            "samples": p | "s" >> beam.Create([(0, s) for s in [*shard0, dup]]),
            "failures": p | "f" >> beam.Create([(0, failure)]),
            "drops": p | "d" >> beam.Create([(0, duplicate_record(dup["key"],
                                                                  shard0[0]["key"]))]),
            "plan": p | "p" >> beam.Create([(0, plan), (1, {**plan, "candidates": 1})]),
        } | WriteShards(output)
        assert_that(stats | beam.Map(lambda s: (s["shard"], s["written"])),
                    equal_to([(0, 3), (1, 0)]))

    paths = shard_paths(output, 0)
    read = list(wds.WebDataset(paths["tar"], shardshuffle=False))
    assert [s["__key__"] for s in read] == sorted(s["key"] for s in shard0)
    table = pq.read_table(paths["parquet"])
    assert table.column("key").to_pylist() == sorted(s["key"] for s in shard0)
    assert "jpg" not in table.column_names
    failures = pq.read_table(paths["failures"]).to_pylist()
    assert sorted(f["reason"] for f in failures) == [Reason.DUPLICATE_IMAGE, Reason.HTTP_NOT_FOUND]
    stats0 = storage.read_json(paths["stats"])
    assert stats0["plan"] == plan and stats0["written"] == 3
    assert stats0["dropped"] == {"dedup_image": {"duplicate_image": 1},
                                 "download": {"http_404": 1}}
    assert stats0["queries"] == {"circle": 3, "red": 3}
    assert not (tmp_path / "shards" / "000001.tar").exists()
    assert set(read_completed_shards(output)) == {0, 1}
    leftovers = [p for p in (tmp_path / "shards").iterdir() if p.name.endswith(".inprogress")]
    assert leftovers == []


def test_corpus_stats_account_for_every_candidate():
    stage_kept = {"read": 90, "normalise": 85, "match": 60, "dedup_url": 58, "balance": 50,
                  "language": 40}
    text_dropped = {("read", "missing_url"): 10, ("normalise", "empty_caption"): 5,
                    ("match", "no_query_match"): 25, ("language", "language_not_wanted"): 10,
                    ("dedup_url", "duplicate_url"): 2, ("balance", "balanced_out"): 8}
    shards = [
        {"shard": 0, "plan": {"candidates": 25}, "written": 19, "tar_bytes": 100,
         "dropped": {"download": {"http_404": 3}, "dedup_image": {"duplicate_image": 2},
                     "cap": {"over_query_cap": 1}},
         "languages": {"en": 19}},
        {"shard": 1, "plan": {"candidates": 15}, "written": 15, "tar_bytes": 50, "dropped": {},
         "languages": {"en": 15}},
    ]
    entries = text_stage_entries(100, text_dropped)
    assert [e["kept"] for e in entries] == [stage_kept[s] for s in Stage.TEXT]
    assert check_curated(entries, 40) == []
    assert check_curated(entries, 39) == [
        "language should have kept 40 (its input less its failures) but 39 were curated"]
    assert [e["in"] for e in entries] == [100, 90, 85, 60, 58, 50]
    stats = corpus_stats(entries, shards, 2)
    assert stats["input_rows"] == 100 and stats["written"] == 34
    assert [s["stage"] for s in stats["stages"]] == list(Stage.ORDER)
    assert [(s["in"], s["kept"]) for s in stats["stages"][-3:]] == [(40, 37), (37, 35), (35, 34)]
    assert check_accounting(stats) == []
    assert stats["failures_by_reason"]["no_query_match"] == 25
    broken = corpus_stats(entries, [*shards, {**shards[1], "shard": 2}], 3)
    assert check_accounting(broken) == ["language kept 40 but download received 55"]
    short = corpus_stats(entries, [{**shards[0], "written": 18}, shards[1]], 2)
    assert check_accounting(short) == ["cap kept 34 but the shards hold 33"]


def test_stale_shard_files():
    paths = ["o/shards/000000.tar", "o/shards/000003.tar", "o/shards/000003_stats.json",
             "o/shards/sizes.json", "o/failures/shard-000004.parquet",
             "o/shards/000001.tar.inprogress"]
    assert stale_shard_files(paths, 3) == ["o/shards/000003.tar", "o/shards/000003_stats.json",
                                           "o/failures/shard-000004.parquet",
                                           "o/shards/000001.tar.inprogress"]


def test_parquet_bytes_roundtrip():

    rows = [{"key": "a", "url": None, "caption": "c", "stage": "read", "reason": "r",
             "detail": "", "phash": None, "phash_crops": None, "colours": None}]
    assert pq.read_table(io.BytesIO(storage.encode_parquet(rows, FAILURE_SCHEMA))).to_pylist() == rows


def test_the_tar_writer_writes_what_webdatasets_tarwriter_writes(tmp_path):
    """Shards are written with tarfile, streamed; the bytes are those webdataset's TarWriter
    writes for the same samples (and webdataset reads them back)."""
    from openwit.pipeline.shards.writer import TAR_MODE, TAR_MTIME, TAR_OWNER, sample_metadata

    samples = [sample(i) for i in range(5)]
    samples[2]["caption"] = "ünïcödé caption, with a comma"
    buffer = io.BytesIO()
    with wds.TarWriter(buffer, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE, mtime=TAR_MTIME,
                       encoder=False) as tar:
        for s in samples:
            tar.write({"__key__": s["key"], "jpg": s["jpg"], "txt": s["caption"].encode(),
                       "json": json.dumps(sample_metadata(s), sort_keys=True,
                                          ensure_ascii=False).encode()})
    assert encode_tar(samples) == buffer.getvalue()
    (tmp_path / "000000.tar").write_bytes(encode_tar(samples))
    read = list(wds.WebDataset(str(tmp_path / "000000.tar"), shardshuffle=False))
    assert [r["__key__"] for r in read] == [s["key"] for s in samples]


def test_a_write_that_fails_midway_leaves_no_file(tmp_path):
    path = str(tmp_path / "000000.tar")
    try:
        with storage.create_atomic(path) as stream:
            stream.write(b"half a shard")
            raise RuntimeError("the writer died")
    except RuntimeError:
        pass
    assert not storage.exists(path)
    storage.write_bytes_atomic(path, b"whole")
    assert storage.read_bytes(path) == b"whole"


def test_a_few_removed_near_duplicates_are_kept_beside_the_shard_for_the_report(tmp_path):
    output = str(tmp_path)
    kept, near, copy = sample(1), sample(2), sample(3)
    plan = {"fingerprint": "f", "candidates": 3, "num_shards": 1}
    drops = [failure_record({"key": near["key"]}, Stage.DEDUP_IMAGE, Reason.NEAR_DUPLICATE,
                            f"Hamming distance 3 from {kept['key']}, which is kept"),
             failure_record({"key": copy["key"]}, Stage.DEDUP_IMAGE, Reason.EVAL_DUPLICATE,
                            "Hamming distance 1 from evaluation image eval/1.jpg")]
    with beam_test_pipeline() as p:
        staged = (p | "s" >> beam.Create([(0, s) for s in (kept, near, copy)])
                  | beam.ParDo(StageImages(output)))
        _ = {
            "samples": staged,
            "failures": p | "f" >> beam.Create([]),
            "drops": p | "d" >> beam.Create([(0, d) for d in drops]),
            "plan": p | "p" >> beam.Create([(0, plan)]),
        } | WriteShards(output)
    removed = list(wds.WebDataset(shard_paths(output, 0)["removed"], shardshuffle=False))
    assert sorted(s["__key__"] for s in removed) == sorted([near["key"], copy["key"]])
    for got in removed:
        original = near if got["__key__"] == near["key"] else copy
        assert got["jpg"] == original["jpg"]
        record = json.loads(got["json"])
        assert record["url"] == original["url"] and record["reason"] in (
            Reason.NEAR_DUPLICATE, Reason.EVAL_DUPLICATE)
    assert [s["__key__"] for s in wds.WebDataset(shard_paths(output, 0)["tar"],
                                                  shardshuffle=False)] == [kept["key"]]
