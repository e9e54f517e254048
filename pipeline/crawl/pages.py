"""One crawled page -> its image links: from a WAT metadata record (the JSON Common Crawl's
`ia-web-commons` writes) or from the HTML of a WARC response record.

Both give a `Page`: the page's URL, crawl date and WARC record id, the URL its relative links
resolve against, and each `<img>` as (src, alt, title). What cannot be read is counted by
`PageCount`, never raised.

WAT: `Envelope.WARC-Header-Metadata` holds the page's URL, date and record id (the WAT
record's own date is when the WAT was made, and its id is new); `Envelope.Payload-Metadata.
HTTP-Response-Metadata.HTML-Metadata` holds `Head.Base` and `Links`, whose `IMG@/src` entries
carry `url` (as written in the page), `alt` and `title`. WAT has no `srcset`.

WARC: the response's HTTP head gives the status, the media type and the charset; the body is
parsed by Resiliparse (lexbor, the HTML5 parsing algorithm that browsers follow) after its
encoding is detected when the head does not name it. An `<img srcset>` gives its largest
candidate instead of `src`.
"""

from __future__ import annotations

import dataclasses
import json
import zlib

from openwit.pipeline.crawl.links import largest_in_srcset, resolve_base

HTML_TYPES = ("text/html", "application/xhtml+xml")
MAX_LINKS_PER_PAGE = 10_000  # a page with more image links is read up to this many


class PageCount:
    """Why a record gave no page, or a page no link. Stable strings: stats.json keys."""

    MALFORMED_JSON = "malformed_json"  # not JSON, or JSON without the WAT's structure
    NOT_HTML = "not_html"  # a WAT record of a request, a redirect, a PDF; a non-HTML response
    NOT_OK = "http_not_ok"  # a WARC response whose status is not 200
    UNDECODABLE_HTML = "undecodable_html"  # a compressed body that does not decompress
    TOO_MANY_LINKS = "too_many_links"


@dataclasses.dataclass(frozen=True)
class Page:
    url: str
    date: str | None
    record_id: str | None
    base: str  # what relative links resolve against
    images: list[tuple[str | None, str | None, str | None]]  # (src, alt, title)


def page_of_wat(block: bytes, counts: dict) -> Page | None:
    try:
        document = json.loads(block)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to parse
        _count(counts, PageCount.MALFORMED_JSON)
        return None
    envelope = _field(document, "Envelope")
    header = _field(envelope, "WARC-Header-Metadata")
    html = _field(_field(_field(envelope, "Payload-Metadata"), "HTTP-Response-Metadata"),
                  "HTML-Metadata")
    if header is None or not isinstance(header.get("WARC-Target-URI"), str):
        _count(counts, PageCount.MALFORMED_JSON)
        return None
    if header.get("WARC-Type") != "response" or html is None:
        _count(counts, PageCount.NOT_HTML)
        return None
    links = html.get("Links", [])
    if not isinstance(links, list):
        _count(counts, PageCount.MALFORMED_JSON)
        return None
    images = []
    for link in links:
        if isinstance(link, dict) and link.get("path") == "IMG@/src":
            images.append((_text(link.get("url")), _text(link.get("alt")),
                           _text(link.get("title"))))
    page_url = header["WARC-Target-URI"]
    return Page(url=page_url, date=_text(header.get("WARC-Date")),
                record_id=_text(header.get("WARC-Record-ID")),
                base=resolve_base(page_url, _text(_field(html, "Head", {}).get("Base"))),
                images=_capped(images, counts))


def page_of_html(block: bytes, page_url: str, date: str | None, record_id: str | None,
                 counts: dict, max_body_bytes: int) -> Page | None:
    """A WARC response record's block (HTTP head and body) -> its page, or None."""
    head, _, body = block.partition(b"\r\n\r\n")
    status, headers = _http_head(head)
    media_type, charset = _content_type(headers.get("content-type", ""))
    if status != 200:
        _count(counts, PageCount.NOT_OK)
        return None
    if media_type not in HTML_TYPES:
        _count(counts, PageCount.NOT_HTML)
        return None
    body = _decoded(body, headers.get("content-encoding", "identity"), max_body_bytes)
    if body is None:
        _count(counts, PageCount.UNDECODABLE_HTML)
        return None
    from resiliparse.parse.encoding import detect_encoding
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse_from_bytes(body, charset or detect_encoding(body))
    document = tree.document
    base_element = document.query_selector("base[href]") if document is not None else None
    images = []
    for image in document.query_selector_all("img") if document is not None else ():
        src = largest_in_srcset(image.getattr("srcset")) or image.getattr("src")
        images.append((src, image.getattr("alt"), image.getattr("title")))
    return Page(url=page_url, date=date, record_id=record_id,
                base=resolve_base(page_url, base_element.getattr("href")
                                  if base_element is not None else None),
                images=_capped(images, counts))


def _http_head(head: bytes) -> tuple[int | None, dict[str, str]]:
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def _content_type(value: str) -> tuple[str, str | None]:
    media_type, *parameters = value.split(";")
    charset = None
    for parameter in parameters:
        name, _, setting = parameter.partition("=")
        if name.strip().lower() == "charset" and setting.strip(" \"'"):
            charset = setting.strip(" \"'").lower()
    return media_type.strip().lower(), charset


def _decoded(body: bytes, encoding: str, limit: int) -> bytes | None:
    """The body without its Content-Encoding (gzip, deflate), at most `limit` bytes; None
    when it does not decompress or is an encoding not read here."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    try:
        inflater = zlib.decompressobj(31 if "gzip" in encoding else 15)
        data = inflater.decompress(body, limit)
    except zlib.error:
        if encoding != "deflate":
            return None
        try:  # servers send raw deflate under "deflate" as often as zlib's
            data = zlib.decompressobj(-15).decompress(body, limit)
        except zlib.error:
            return None
    return data


def _field(value, name: str, default=None):
    item = value.get(name) if isinstance(value, dict) else None
    return item if isinstance(item, dict) else default


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _capped(images: list, counts: dict) -> list:
    if len(images) > MAX_LINKS_PER_PAGE:
        _count(counts, PageCount.TOO_MANY_LINKS)
        return images[:MAX_LINKS_PER_PAGE]
    return images


def _count(counts: dict, name: str) -> None:
    counts[name] = counts.get(name, 0) + 1
