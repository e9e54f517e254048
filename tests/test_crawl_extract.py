"""Crawl files -> candidates: WAT and WARC files written here, page by page, and the exact
candidates and counts `ExtractCandidates` must give for them; damaged files read past."""

import gzip
import io
import json

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from helpers import beam_test_pipeline
from openwit.pipeline.apps.miniweb.crawl import record
from openwit.pipeline.crawl.config import CrawlConfig
from openwit.pipeline.crawl.extract import ExtractCandidates
from openwit.pipeline.crawl.records import ReadCount, read_records

pytest.importorskip("fastwarc")
pytest.importorskip("resiliparse")

DATE = "2024-05-18T01:58:10Z"


def wat_page(url, links, base=None, date=DATE, record_id="<urn:uuid:p1>", warc_type="response"):
    head = {"Title": "t"}
    if base is not None:
        head["Base"] = base
    document = {"Envelope": {
        "WARC-Header-Metadata": {"WARC-Type": warc_type, "WARC-Target-URI": url,
                                 "WARC-Date": date, "WARC-Record-ID": record_id},
        "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {
            "Head": head, "Links": links}}}}}
    return wat_block(url, json.dumps(document).encode())


def wat_block(url, block):
    # The WAT record's own date and id are the WAT's, not the page's.
    return record({"WARC-Type": "metadata", "WARC-Target-URI": url,
                   "WARC-Date": "2024-07-01T00:00:00Z", "WARC-Record-ID": "<urn:uuid:wat>",
                   "Content-Type": "application/json"}, block)


def img(url, alt=None, title=None):
    link = {"path": "IMG@/src", "url": url}
    if alt is not None:
        link["alt"] = alt
    if title is not None:
        link["title"] = title
    return link


def candidate(url, alt, page, title=None, date=DATE, record_id="<urn:uuid:p1>"):
    from openwit.pipeline.core.records import sample_key

    return {"key": sample_key(url, alt), "url": url, "caption": alt, "title": title,
            "page_url": page, "crawl_date": date, "record_id": record_id}


def extract(tmp_path, files: dict, check, mode="wat", flush_pairs=50_000):
    """Runs ExtractCandidates over `files` {name: bytes} and calls `check(candidates, totals)`
    in the pipeline (a matcher: results cannot leave a Beam worker by closure)."""
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with beam_test_pipeline() as pipeline:
        config = CrawlConfig(inputs=(str(tmp_path / "*"),), mode=mode, output=str(tmp_path))
        result = pipeline | ExtractCandidates(config, files=len(files), flush_pairs=flush_pairs)
        candidates = (result.candidates | "unbatch" >> beam.FlatMap(lambda batch: batch)
                      | "all candidates" >> beam.combiners.ToList())
        totals = result.totals | "all totals" >> beam.combiners.ToDict()
        checked = candidates | "check" >> beam.Map(
            lambda found, counts: check(found, counts) or True,
            counts=beam.pvalue.AsSingleton(totals))
        assert_that(checked, equal_to([True]))


PAGE = "http://site.example/blog/post.html"
BASE_PAGE = "http://site.example/a/b.html"


def test_wat_pages_give_exactly_their_image_alt_pairs(tmp_path):
    first = wat_page(PAGE, [
        img("http://cdn.example/abs.jpg", "absolute"),
        img("/root.jpg", "root-relative", title="a title"),
        img("rel.jpg", "relative"),
        img("../up.jpg", "up one"),
        img("//cdn.example/proto.jpg", "protocol-relative"),
        img("HTTP://CDN.EXAMPLE/case.jpg#frag", "case and fragment"),
        img("/no-alt.jpg"),
        img("/empty-alt.jpg", "   "),
        img("data:image/png;base64,iVBORw0KGgo=", "a data URI"),
        img("javascript:void(0)", "script"),
        img("", "no src"),
        {"path": "A@/href", "url": "/not-an-image.html", "text": "link"},
        img("http://cdn.example/abs.jpg", "absolute"),  # the same pair again on this page
    ])
    second = wat_page(BASE_PAGE, [
        img("base.jpg", "base-relative"),
        img("/root.jpg", "root-relative"),  # a pair the first page has, crawled earlier
        img("http://cdn.example/abs.jpg", "absolute"),
    ], base="/static/", date="2024-05-19T00:00:00Z", record_id="<urn:uuid:p2>")
    request = wat_page(PAGE, [img("/x.jpg", "x")], warc_type="request")
    expected = sorted([
        candidate("http://cdn.example/abs.jpg", "absolute", PAGE),
        candidate("http://site.example/root.jpg", "root-relative", PAGE, title="a title"),
        candidate("http://site.example/blog/rel.jpg", "relative", PAGE),
        candidate("http://site.example/up.jpg", "up one", PAGE),
        candidate("http://cdn.example/proto.jpg", "protocol-relative", PAGE),
        candidate("http://cdn.example/case.jpg", "case and fragment", PAGE),
        candidate("http://site.example/static/base.jpg", "base-relative", BASE_PAGE,
                  date="2024-05-19T00:00:00Z", record_id="<urn:uuid:p2>"),
    ], key=lambda c: c["url"])

    def check(candidates, totals):
        assert sorted(candidates, key=lambda c: c["url"]) == expected
        assert totals == {"files": 1, "records": 3, "pages": 2, "image_links": 15,
                          "pairs": 10, "candidates": 7, "no_alt": 2, "data_uri": 1,
                          "not_http": 1, "empty_src": 1, "not_html": 1}

    extract(tmp_path, {"a.warc.wat.gz": first + second + request}, check)


def test_damaged_wat_files_are_read_past_and_counted(tmp_path):
    good = [wat_page(f"http://site.example/{i}.html", [img(f"/{i}.jpg", f"image {i}")],
                     record_id=f"<urn:uuid:{i}>") for i in range(6)]
    broken_json = wat_block("http://site.example/bad.html", b'{"Envelope": {"WARC-Hea')
    wrong_shape = wat_block("http://site.example/odd.html",
                            json.dumps({"Envelope": ["not", "a", "dict"]}).encode())
    deep = wat_block("http://site.example/deep.html", b"[" * 100_000 + b"]" * 100_000)
    corrupt = bytearray(good[2])
    corrupt[len(corrupt) // 2] ^= 0xFF  # the deflate data of one member
    data = (good[0] + good[1] + bytes(corrupt) + b"garbage between members" + good[3]
            + broken_json + wrong_shape + deep + good[4] + good[5][:len(good[5]) // 2])

    def check(candidates, totals):
        assert sorted(c["caption"] for c in candidates) == ["image 0", "image 1", "image 3",
                                                            "image 4"]
        assert totals["unreadable_region"] == 1  # the corrupt member and the garbage after it
        assert totals["malformed_json"] == 3
        assert totals["truncated_record"] == 1  # the last member, cut in half
        assert totals["pages"] == 4

    extract(tmp_path, {"a.warc.wat.gz": data}, check)


def test_a_file_cut_off_mid_record_counts_the_record_as_truncated():
    whole = record({"WARC-Type": "metadata", "WARC-Target-URI": "http://a.example/",
                    "Content-Type": "application/json"}, b'{"x": "' + b"y" * 5000 + b'"}')
    raw = gzip.decompress(whole)
    cut = gzip.compress(raw[:len(raw) // 2], mtime=0)  # a complete member, half a record
    counts = {}
    assert list(read_records(io.BytesIO(cut), counts, 1 << 20)) == []
    assert counts == {ReadCount.TRUNCATED_RECORD: 1}


def test_records_over_the_limit_are_read_past(tmp_path):
    big = wat_page(PAGE, [img("/big.jpg", "x" * 3_000_000)])
    small = wat_page(BASE_PAGE, [img("/small.jpg", "small")])
    counts = {}
    records = list(read_records(io.BytesIO(big + small), counts, 1 << 20))
    assert [r.target_uri for r in records] == [BASE_PAGE]
    assert counts == {ReadCount.OVERSIZED_RECORD: 1}


def html_response(url, body: bytes, content_type="text/html; charset=utf-8", status="200 OK",
                  extra_headers="", date=DATE, record_id="<urn:uuid:r1>"):
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra_headers}\r\n".encode()
    return record({"WARC-Type": "response", "WARC-Target-URI": url, "WARC-Date": date,
                   "WARC-Record-ID": record_id,
                   "Content-Type": "application/http; msgtype=response"}, head + body)


def test_warc_html_gives_img_src_alt_and_the_largest_srcset(tmp_path):
    page = (b'<!doctype html><html><head><base href="/media/"><title>t</title></head><body>'
            b'<img src="a.jpg" alt="plain &amp; simple">'
            b'<IMG SRC="small.jpg" SRCSET="small.jpg 320w, big.jpg 1280w" ALT="srcset">'
            b'<img src="//cdn.example/p.jpg" alt="protocol" title="T">'
            b'<img src="nothing.jpg">'
            b'<img src="data:image/gif;base64,R0lG" alt="pixel">'
            b'<picture><source srcset="x.webp"><img src="pic.jpg" alt="in a picture"></picture>'
            b'</body></html>')
    latin = '<html><body><img src="/caf\u00e9.jpg" alt="caf\u00e9 cr\u00e8me"></body></html>'
    redirect = html_response("http://site.example/moved", b"", status="301 Moved")
    pdf = html_response("http://site.example/doc.pdf", b"%PDF-1.4", "application/pdf")
    gzipped = html_response("http://site.example/gz.html",
                            gzip.compress(b'<img src="/gz.jpg" alt="from gzip">'),
                            extra_headers="Content-Encoding: gzip\r\n", record_id="<urn:uuid:g>")
    bad_gzip = html_response("http://site.example/bad.html", b"\x1f\x8bnot gzip at all",
                             extra_headers="Content-Encoding: gzip\r\n")
    files = {"a.warc.gz": html_response(PAGE, page)
             + html_response("http://site.example/latin.html", latin.encode("cp1252"),
                             "text/html", record_id="<urn:uuid:l>")
             + redirect + pdf + gzipped + bad_gzip}

    def check(candidates, totals):
        by_alt = {c["caption"]: c for c in candidates}
        assert {alt: c["url"] for alt, c in by_alt.items()} == EXPECTED_WARC
        assert by_alt["protocol"]["title"] == "T" and by_alt["srcset"]["page_url"] == PAGE
        assert by_alt["from gzip"]["record_id"] == "<urn:uuid:g>"
        assert totals["http_not_ok"] == 1 and totals["not_html"] == 1
        assert totals["undecodable_html"] == 1
        assert totals["no_alt"] == 1 and totals["data_uri"] == 1

    extract(tmp_path, files, check, mode="warc")


EXPECTED_WARC = {
        "plain & simple": "http://site.example/media/a.jpg",
        "srcset": "http://site.example/media/big.jpg",
        "protocol": "http://cdn.example/p.jpg",
        "in a picture": "http://site.example/media/pic.jpg",
        "caf\u00e9 cr\u00e8me": "http://site.example/caf\u00e9.jpg",
        "from gzip": "http://site.example/gz.jpg",
}


def test_the_same_pair_from_many_files_is_one_candidate_from_the_first_crawl(tmp_path):
    files = {f"{i}.warc.wat.gz": wat_page(f"http://site.example/{i}.html",
                                          [img("http://cdn.example/same.jpg", "same alt")],
                                          date=f"2024-05-{10 + i}T00:00:00Z",
                                          record_id=f"<urn:uuid:{i}>")
             for i in (3, 1, 2)}
    expected = [candidate("http://cdn.example/same.jpg", "same alt",
                          "http://site.example/1.html", date="2024-05-11T00:00:00Z",
                          record_id="<urn:uuid:1>")]

    def check(candidates, totals):
        assert candidates == expected
        assert totals["pairs"] == 3 and totals["candidates"] == 1 and totals["files"] == 3

    extract(tmp_path, files, check)


def test_warcio_reads_the_records_these_files_hold(tmp_path):
    """The test files are WARC as another reader sees them, not only as ours does."""
    warcio = pytest.importorskip("warcio.archiveiterator")
    data = wat_page(PAGE, [img("/a.jpg", "a")]) + html_response(PAGE, b"<img src=a.jpg alt=a>")
    seen = [(r.rec_type, r.rec_headers.get_header("WARC-Target-URI"))
            for r in warcio.ArchiveIterator(io.BytesIO(data))]
    assert seen == [("metadata", PAGE), ("response", PAGE)]
    ours = [(r.record_type, r.target_uri) for r in read_records(io.BytesIO(data), {}, 1 << 20)]
    assert ours == [(32, PAGE), (4, PAGE)]




def test_a_worker_sends_batches_on_and_pairs_stay_once_across_them(tmp_path):
    """With batches of 3 pairs, copies of a pair in different batches and files are still
    one candidate."""
    pages = [wat_page(f"http://site.example/{i}.html",
                      [img(f"/{j}.jpg", f"alt {j}") for j in range(i, i + 5)],
                      date=f"2024-05-{10 + i}T00:00:00Z", record_id=f"<urn:uuid:{i}>")
             for i in range(8)]
    files = {"a.warc.wat.gz": b"".join(pages[:4]), "b.warc.wat.gz": b"".join(pages[4:])}

    def check(candidates, totals):
        assert sorted(c["caption"] for c in candidates) == sorted(f"alt {j}" for j in range(12))
        firsts = {c["caption"]: c["page_url"] for c in candidates}
        assert firsts["alt 4"] == "http://site.example/0.html"  # on pages 0-4: 0 is first
        assert totals["pairs"] == 40 and totals["candidates"] == 12

    extract(tmp_path, files, check, flush_pairs=3)
