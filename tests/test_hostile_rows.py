"""Poisoned candidate rows: each one ends as a counted failure with a reason, the rest of the
file is still read, and nothing a row holds can crash the writers later (every failure record
and every candidate encodes to parquet)."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from openwit.pipeline.core import storage
from openwit.pipeline.core.layout import FAILURE_SCHEMA, MATCHED_SCHEMA
from openwit.pipeline.core.records import Reason
from openwit.pipeline.text.config import ReadConfig
from openwit.pipeline.text.read import MAX_LINE_BYTES, MAX_URL_CHARS, ParseUnit

GOOD = {"url": "http://a.test/good.jpg", "caption": "a good caption"}


def parse(path, fmt):
    """Runs the read stage's DoFn on one file: (candidates, failures, rows counted)."""
    fn = ParseUnit(ReadConfig(candidates=(str(path),)), batch_size=64)
    fn.setup()
    kept, failed, rows = [], [], 0
    for output in fn.process((str(path), fmt, None)):
        if isinstance(output, beam.pvalue.TaggedOutput):
            if output.tag == "rows":
                rows += output.value
            else:
                failed.append(output.value)
        else:
            kept += output
    # Later stages write both: neither may hold anything parquet cannot store.
    storage.encode_parquet(failed, FAILURE_SCHEMA)
    storage.encode_parquet([{**c, "query_ids": []} for c in kept], MATCHED_SCHEMA)
    return kept, failed, rows


def jsonl(tmp_path, lines: list[bytes]):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def good_line() -> bytes:
    return json.dumps(GOOD).encode()


@pytest.mark.parametrize("line, reason, detail", [
    (b'{"url": "http://a.test/1.jpg", "caption": "lone \\ud800 surrogate"}',
     Reason.MALFORMED_ROW, "lone surrogate"),
    (b'{"url": "http://a.test/\\udfff.jpg", "caption": "x"}', Reason.INVALID_URL, "url="),
    (b'{"url": "http://a.test/1.jpg", "caption": "bad \xff byte"}', Reason.MALFORMED_ROW,
     "not valid UTF-8"),
    (b"[" * 200_000 + b"]" * 200_000, Reason.MALFORMED_ROW, "nested too deeply"),
    (b'{"url": "http://a.test/' + b"a" * (MAX_LINE_BYTES + 10) + b'.jpg"}',
     Reason.MALFORMED_ROW, "longer than"),
    (b'{"url": "http://a.test/' + b"a" * MAX_URL_CHARS + b'.jpg", "caption": "x"}',
     Reason.INVALID_URL, "url="),
    (b'{"url": "http://a.test/x\\u0000y.jpg", "caption": "x"}', Reason.INVALID_URL, "url="),
    (b'{"url": ["http://a.test/1.jpg"], "caption": "x"}', Reason.INVALID_URL, "url="),
    (b'"just a string"', Reason.MALFORMED_ROW, "not a JSON object"),
    (b'{"url": "http://a.test/1.jpg", "caption": "x"', Reason.MALFORMED_ROW, "line 2"),
])
def test_a_poisoned_json_line_costs_only_itself(tmp_path, line, reason, detail):
    kept, failed, rows = parse(jsonl(tmp_path, [good_line(), line, good_line()]), "jsonl")
    assert rows == 3
    assert len(kept) == 2 and all(c["url"] == GOOD["url"] for c in kept)
    (record,) = failed
    assert record["reason"] == reason and detail in record["detail"], record


def test_nul_bytes_in_a_caption_are_kept_for_the_normaliser(tmp_path):
    line = json.dumps({"url": "http://a.test/1.jpg", "caption": "nul\x00byte"}).encode()
    kept, failed, rows = parse(jsonl(tmp_path, [line]), "jsonl")
    assert rows == 1 and not failed and kept[0]["caption"] == "nul\x00byte"
    from openwit.pipeline.text.normalise import normalise_caption

    assert normalise_caption(kept[0]["caption"]) == "nul byte"


def test_invalid_utf8_in_a_csv_costs_only_its_row(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"url,caption\n"
                     b"http://a.test/1.jpg,fine\n"
                     b"http://a.test/2.jpg,bro\xe9ken\n"
                     b"http://a.test/\xff.jpg,bad url\n"
                     b"http://a.test/3.jpg,nul\x00inside\n"
                     b"http://a.test/4.jpg,too,many,fields\n"
                     b"http://a.test/5.jpg,last\n")
    kept, failed, rows = parse(path, "csv")
    assert rows == 6
    assert [c["url"] for c in kept] == ["http://a.test/1.jpg", "http://a.test/3.jpg",
                                       "http://a.test/5.jpg"]
    assert sorted(f["detail"].split(": ", 1)[1] for f in failed) == [
        "caption is not valid UTF-8", "expected 2 fields, got 4", "url is not valid UTF-8"]
    assert {f["reason"] for f in failed} == {Reason.MALFORMED_ROW}


def test_a_csv_row_larger_than_a_block_is_a_counted_failure(tmp_path, monkeypatch):
    from openwit.pipeline.text import read

    monkeypatch.setattr(read, "CSV_BLOCK_BYTES", 4096)
    path = tmp_path / "c.csv"
    path.write_bytes(b"url,caption\nhttp://a.test/1.jpg,fine\nhttp://a.test/2.jpg,"
                     + b"x" * 20_000 + b"\nhttp://a.test/3.jpg,after\n")
    kept, failed, rows = parse(path, "csv")
    assert failed and failed[-1]["reason"] == Reason.MALFORMED_ROW
    assert "cannot be parsed" in failed[-1]["detail"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.builds(lambda u, c: json.dumps({"url": u, "caption": c}).encode(),
              st.text(max_size=60), st.text(max_size=60)),
    st.builds(lambda u, c: json.dumps({"url": "http://a.test/" + u, "caption": c},
                                      ensure_ascii=False).encode("utf-8", "surrogatepass"),
              st.text(max_size=30), st.text(max_size=60)),
), max_size=20))
def test_no_jsonl_input_crashes_the_reader(tmp_path, lines):
    lines = [line.replace(b"\n", b" ") for line in lines]
    kept, failed, rows = parse(jsonl(tmp_path, lines), "jsonl")

    def blank(line: bytes) -> bool:
        try:
            return not line.decode("utf-8").strip()
        except UnicodeDecodeError:
            return False

    # Every non-blank line is a row, and a candidate or a reasoned failure (blank lines are
    # no rows).
    assert len(kept) + len(failed) == rows == sum(1 for line in lines if not blank(line))
    assert all(f["reason"] in (Reason.MALFORMED_ROW, Reason.INVALID_URL, Reason.MISSING_URL)
               for f in failed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=80)), max_size=20))
def test_no_csv_input_crashes_the_reader(tmp_path, rows):
    def field(value: bytes) -> bytes:
        return b'"' + value.replace(b'"', b'""') + b'"'

    path = tmp_path / "c.csv"
    path.write_bytes(b"url,caption\n" + b"".join(
        field(b"http://a.test/" + url) + b"," + field(caption) + b"\n" for url, caption in rows))
    kept, failed, counted = parse(path, "csv")
    assert len(kept) + len(failed) == counted == len(rows)


# --- captions ------------------------------------------------------------------------------

@pytest.mark.parametrize("caption, expected", [
    ("evil\u202etxt.exe", "eviltxt.exe"),  # right-to-left override
    ("\u2066isolated\u2069 text", "isolated text"),
    ("co\u00adoperate", "cooperate"),  # soft hyphen
    ("word\u2060joiner", "wordjoiner"),
    ("tag\U000e0041\U000e007fs", "tags"),
    ("zero\u200bwidth", "zero width"),
    ("bell\x07 and\x00nul", "bell and nul"),
])
def test_hidden_characters_leave_captions(caption, expected):
    from openwit.pipeline.text.normalise import normalise_caption

    assert normalise_caption(caption) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_the_normaliser_leaves_no_hidden_character(caption):
    from openwit.pipeline.text import normalise

    out = normalise.normalise_caption(caption)
    assert out == out.strip() and "  " not in out
    assert not normalise._HIDDEN.search(out) and not normalise._INVISIBLE.search(out)
    assert not any(c in out for c in "\t\n\r\x0b\x0c")


# --- the trainer's tar reader -----------------------------------------------------------------

def tar_header(name: str, size_field: bytes | None = None, size: int = 0,
               type_flag: bytes = b"0") -> bytes:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    info.type = type_flag
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT)[:512])
    if size_field is not None:
        header[124:136] = size_field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % (sum(header))
    return bytes(header)


def pax_header(records: bytes) -> bytes:
    padded = records + b"\0" * (-len(records) % 512)
    return tar_header("././@PaxHeader", size=len(records), type_flag=b"x") + padded


def member(name: str, payload: bytes) -> bytes:
    return tar_header(name, size=len(payload)) + payload + b"\0" * (-len(payload) % 512)


def read_members(data: bytes):
    import io

    from openwit.model import data as loader

    return list(loader.tar_members(io.BytesIO(data)))


@pytest.mark.parametrize("hostile, error", [
    (tar_header("a.jpg", size_field=b"\x80" + (2**80).to_bytes(11, "big")), "end of data"),
    (pax_header(b"23 size=10000000000000\n") + tar_header("a.jpg"), "end of data"),
    (pax_header(b"11 size=-5\n") + tar_header("a.jpg"), "negative pax size"),
    (pax_header(b"0 x=\n" + b"\0" * 10) + tar_header("a.jpg"), "pax record"),
    (tar_header("a.jpg", size_field=b"\xff" * 12), "negative base-256"),
])
def test_absurd_tar_sizes_are_format_errors_not_allocations(hostile, error):
    pytest.importorskip("torch")
    from openwit.model import data as loader

    with pytest.raises(loader.TarFormatError, match=error):
        read_members(member("ok.txt", b"fine") + hostile + bytes(1024))


def test_an_oversized_member_is_read_past_and_named(monkeypatch):
    pytest.importorskip("torch")
    from openwit.model import data as loader

    monkeypatch.setattr(loader, "MAX_MEMBER_BYTES", 1000)
    members = read_members(member("a.jpg", b"x" * 5000) + member("a.txt", b"caption")
                           + bytes(1024))
    assert members == [("a.jpg", None), ("a.txt", b"caption")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=12))
def test_no_corruption_of_a_tar_crashes_its_reader(flips):
    pytest.importorskip("torch")
    from openwit.model import data as loader

    original = bytearray(pax_header(b"16 path=a/b.jpg\n") + member("x.jpg", b"\xff\xd8" * 300)
                         + member("x.txt", b"a caption") + bytes(1024))
    for position, value in flips:
        original[position % len(original)] = value
    try:
        for name, payload in read_members(bytes(original)):
            assert isinstance(name, str) and (payload is None or len(payload) <= 4096)
    except loader.TAR_ERRORS:
        pass
