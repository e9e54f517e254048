"""ReadCandidates: every supported format, column defaults, and every malformed row counted."""

import gzip
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from helpers import beam_test_pipeline
from openwit.pipeline.text.config import ReadConfig
from openwit.pipeline.text.read import ReadCandidates, check_url, detect_format, resolve_column
from openwit.pipeline.core.records import Reason, sample_key
from openwit.pipeline.text.steps import unbatch


def read_all(config: ReadConfig, expected_kept, expected_failures):
    with beam_test_pipeline() as p:
        result = p | ReadCandidates(config)
        assert_that(unbatch(result.kept) | "kept pairs" >> _pairs(), equal_to(expected_kept), label="kept")
        assert_that(
            result.failed | "reasons" >> _reasons(), equal_to(expected_failures), label="failed"
        )


def _pairs():
    import apache_beam as beam

    return beam.Map(lambda c: (c["url"], c["caption"], c["key"] == sample_key(c["url"],
                                                                              c["caption"])))


def _reasons():
    import apache_beam as beam

    return beam.Map(lambda f: (f["stage"], f["reason"]))


def test_parquet_with_row_groups_and_bad_urls(tmp_path):
    path = tmp_path / "list.parquet"
    table = pa.table({
        "URL": ["http://a.test/1.jpg", None, "ftp://a.test/x", "https://b.test/2.png", "nope", ""],
        "TEXT": ["one", "two", "three", None, "five", "six"],
        "other": [1, 2, 3, 4, 5, 6],
    })
    pq.write_table(table, path, row_group_size=2)  # three row groups: three parse units
    read_all(
        ReadConfig(candidates=(str(path),)),
        [("http://a.test/1.jpg", "one", True), ("https://b.test/2.png", "", True)],
        [("read", Reason.MISSING_URL), ("read", Reason.INVALID_URL),
         ("read", Reason.INVALID_URL), ("read", Reason.MISSING_URL)],
    )


def test_csv_with_quoted_newlines_and_a_ragged_row(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(
        'url,caption,extra\n'
        'http://a.test/1.jpg,"a caption, with a comma",x\n'
        'http://a.test/2.jpg,"two\nlines",y\n'
        'http://a.test/3.jpg,too,many,fields,here\n'
        'http://a.test/4.jpg,123,z\n'
    )
    read_all(
        ReadConfig(candidates=(str(path),)),
        [("http://a.test/1.jpg", "a caption, with a comma", True),
         ("http://a.test/2.jpg", "two\nlines", True),
         ("http://a.test/4.jpg", "123", True)],
        [("read", Reason.MALFORMED_ROW)],
    )


def test_tsv_gzipped_with_custom_columns(tmp_path):
    path = tmp_path / "list.tsv.gz"
    with gzip.open(path, "wt") as f:
        f.write("image\talt\nhttp://a.test/1.jpg\tfirst\nhttp://a.test/2.jpg\tsecond\n")
    read_all(
        ReadConfig(candidates=(str(path),), url_column="image", caption_column="alt"),
        [("http://a.test/1.jpg", "first", True), ("http://a.test/2.jpg", "second", True)],
        [],
    )


def test_jsonl_with_broken_lines(tmp_path):
    path = tmp_path / "list.jsonl"
    lines = [
        json.dumps({"url": "http://a.test/1.jpg", "caption": "ok"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"caption": "no url field"}),
        "",
        json.dumps({"url": 42, "caption": "a number as url"}),
        json.dumps({"url": "http://a.test/2.jpg", "text": "text column"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    read_all(
        ReadConfig(candidates=(str(path),)),
        [("http://a.test/1.jpg", "ok", True), ("http://a.test/2.jpg", "text column", True)],
        [("read", Reason.MALFORMED_ROW), ("read", Reason.MALFORMED_ROW),
         ("read", Reason.MISSING_URL), ("read", Reason.INVALID_URL)],
    )


def test_glob_over_several_files(tmp_path):
    for index in range(3):
        pq.write_table(pa.table({"url": [f"http://a.test/{index}.jpg"], "caption": [str(index)]}),
                       tmp_path / f"part-{index}.parquet")
    read_all(
        ReadConfig(candidates=(str(tmp_path / "part-*.parquet"),)),
        [(f"http://a.test/{i}.jpg", str(i), True) for i in range(3)],
        [],
    )


def test_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="caption"):
        resolve_column(["url", "foo"], None, ("caption", "TEXT"), "caption", "x.parquet")
    with pytest.raises(ValueError, match="'alt'"):
        resolve_column(["url", "foo"], "alt", ("caption",), "caption", "x.parquet")


def test_format_detection():
    assert detect_format("s3://b/x.parquet", None) == "parquet"
    assert detect_format("x.tsv.gz", None) == "tsv"
    assert detect_format("x.txt", "csv") == "csv"
    with pytest.raises(ValueError, match="--input-format"):
        detect_format("x.txt", None)


@pytest.mark.parametrize("url, reason", [
    (None, Reason.MISSING_URL), ("  ", Reason.MISSING_URL), (7, Reason.INVALID_URL),
    ("javascript:alert(1)", Reason.INVALID_URL), ("http://", Reason.INVALID_URL),
    ("http://[::1", Reason.INVALID_URL), ("https://a.test/x.jpg", None),
    (" http://a.test/x.jpg ", None),
])
def test_check_url(url, reason):
    assert check_url(url) == reason


def test_rows_are_counted_per_unit_at_the_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"url": ["http://a.test/1.jpg", None, "ftp://x/y"] * 10,
                             "caption": ["c"] * 30}), path, row_group_size=7)
    with beam_test_pipeline() as p:
        result = p | ReadCandidates(ReadConfig(candidates=(str(path),)))
        assert_that(result.rows | "sum" >> beam.CombineGlobally(sum), equal_to([30]),
                    label="rows")
        assert_that(result.rows | "units" >> beam.combiners.Count.Globally(), equal_to([5]),
                    label="units")
        assert_that(result.failed | "failed" >> beam.combiners.Count.Globally(),
                    equal_to([20]), label="failed")
