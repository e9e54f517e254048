"""Crawl files of pages that show the mini-web's images: WAT files (the JSON metadata records
Common Crawl's `ia-web-commons` writes) and WARC files (the pages' HTML responses), gzip per
record as Common Crawl writes them.

Each (image URL, alt text) pair given is shown on a page, written the ways real pages write
image links: absolute, root-relative, relative to the page's folder, protocol-relative, and
relative to a `<base href>`, with the host in upper case or a fragment here and there. Each
page also shows what a crawl holds and a candidate must not be: an image without alt text, one
with an empty alt, a `data:` URI, a `javascript:` link. In the WARC files the image's own URL
is the largest candidate of a `srcset`, behind a small `src` that is not it. Some pairs appear
on two pages. `CrawlFiles.pairs` is what an extractor must find: every pair given, once.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import json
import posixpath
import random
import urllib.parse
import uuid
from pathlib import Path

CRAWL_DATE = "2024-06-{day:02d}T{hour:02d}:{minute:02d}:00Z"
WAT_DATE = "2024-07-01T00:00:00Z"  # when the WAT files were made, after the crawl
IMAGES_PER_PAGE = 6
FORMS = ("absolute", "root", "relative", "protocol", "base", "upper_host", "fragment")
OTHER_HOST_FORMS = ("absolute", "protocol", "upper_host", "fragment")


@dataclasses.dataclass(frozen=True)
class CrawlFiles:
    wat: tuple[Path, ...]
    warc: tuple[Path, ...]
    pairs: frozenset[tuple[str, str]]  # (url, alt) an extractor must emit, each once
    pages: int
    image_links: int  # every <img> on every page
    without_alt: int  # links that have no alt attribute or an empty one


@dataclasses.dataclass(frozen=True)
class _Page:
    url: str
    date: str
    record_id: str
    base: str | None
    images: list[dict]  # {"src", "alt", "title", "srcset"}; alt None: no attribute


def write_crawl_files(pairs: list[tuple[str, str]], folder: Path, files: int = 2,
                      seed: int = 0) -> CrawlFiles:
    """WAT and WARC files under `folder` for pages showing `pairs` (absolute http(s) image
    URLs with non-empty alt texts)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pages = _pages(pairs, rng)
    wat_paths, warc_paths = [], []
    for index in range(files):
        share = pages[index::files]
        wat = folder / f"crawl-{index:05d}.warc.wat.gz"
        warc = folder / f"crawl-{index:05d}.warc.gz"
        with open(wat, "wb") as out:
            out.write(warcinfo_record(wat.name))
            for page in share:
                out.write(wat_record(page))
        with open(warc, "wb") as out:
            out.write(warcinfo_record(warc.name))
            for page in share:
                out.write(request_record(page))
                out.write(response_record(page))
        wat_paths.append(wat)
        warc_paths.append(warc)
    links = sum(len(page.images) for page in pages)
    without_alt = sum(1 for page in pages for image in page.images
                      if not (image["alt"] or "").strip())
    return CrawlFiles(tuple(wat_paths), tuple(warc_paths), frozenset(pairs), len(pages),
                      links, without_alt)


def _pages(pairs: list[tuple[str, str]], rng: random.Random) -> list[_Page]:
    shown = list(pairs) + rng.sample(list(pairs), k=len(pairs) // 10)  # some on two pages
    rng.shuffle(shown)
    pages = []
    for start in range(0, len(shown), IMAGES_PER_PAGE):
        group = shown[start:start + IMAGES_PER_PAGE]
        number = len(pages)
        first = urllib.parse.urlsplit(group[0][0])
        page_url = f"{first.scheme}://{first.netloc}/site/{number}/index.html"
        uses_base = number % 4 == 3
        images = []
        for url, alt in group:
            same_host = urllib.parse.urlsplit(url).netloc == first.netloc
            # Only a link to the page's own host can be written relative to the page.
            forms = FORMS if same_host else OTHER_HOST_FORMS
            form = "base" if uses_base and same_host else rng.choice(
                [f for f in forms if f != "base"])
            src = _written(url, page_url, form)
            images.append({"src": src, "alt": alt, "title": rng.choice((None, f"{alt[:20]}")),
                           "srcset": None, "url": url})
        images += [
            {"src": f"/nothing/{number}.png", "alt": None, "title": None, "srcset": None},
            {"src": f"/empty/{number}.png", "alt": " ", "title": None, "srcset": None},
            {"src": "data:image/gif;base64,R0lGODlhAQABAAAAACw=", "alt": "a pixel",
             "title": None, "srcset": None},
            {"src": "javascript:void(0)", "alt": "not an image", "title": None,
             "srcset": None},
        ]
        rng.shuffle(images)
        day, hour, minute = 1 + number % 28, number % 24, number % 60
        pages.append(_Page(url=page_url, date=CRAWL_DATE.format(day=day, hour=hour,
                                                                minute=minute),
                           record_id=f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}>",
                           base=f"{first.scheme}://{first.netloc}/" if uses_base else None,
                           images=images))
    return pages


def _written(url: str, page_url: str, form: str) -> str:
    """`url` as a page at `page_url` may write it."""
    parts = urllib.parse.urlsplit(url)
    if form == "root":
        return urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
    if form == "relative":
        here = posixpath.dirname(urllib.parse.urlsplit(page_url).path)
        relative = posixpath.relpath(parts.path, here)
        return relative + (f"?{parts.query}" if parts.query else "")
    if form == "protocol":
        return urllib.parse.urlunsplit(("", parts.netloc, parts.path, parts.query, ""))
    if form == "base":  # the page's base is its host's root
        return parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
    if form == "upper_host":
        return urllib.parse.urlunsplit((parts.scheme.upper(), parts.netloc.upper(), parts.path,
                                        parts.query, ""))
    if form == "fragment":
        return url + "#main"
    return url


# ------------------------------------------------------------------------- WARC records


def record(headers: dict[str, str], block: bytes) -> bytes:
    """One WARC/1.0 record as one gzip member (Common Crawl's layout)."""
    lines = ["WARC/1.0", *(f"{name}: {value}" for name, value in headers.items()),
             f"Content-Length: {len(block)}"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + block + b"\r\n\r\n"
    return gzip.compress(raw, compresslevel=6, mtime=0)


def warcinfo_record(filename: str) -> bytes:
    return record({"WARC-Type": "warcinfo", "WARC-Date": WAT_DATE, "WARC-Filename": filename,
                   "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, filename)}>",
                   "Content-Type": "application/warc-fields"},
                  b"software: openwit mini-web\r\nformat: WARC File Format 1.0\r\n")


def page_html(page: _Page, with_srcset: bool) -> bytes:
    head = f'<base href="{html.escape(page.base)}">' if page.base else ""
    body = []
    for image in page.images:
        attributes = [f'src="{html.escape(image["src"])}"']
        if with_srcset and image.get("url"):
            # The image's own URL is the widest rendition; `src` is a small one.
            small = image["url"].rsplit(".", 1)[0] + "-small.jpg"
            attributes = [f'src="{html.escape(small)}"',
                          f'srcset="{html.escape(small)} 320w, {html.escape(image["src"])} 1024w"']
        if image["alt"] is not None:
            attributes.append(f'alt="{html.escape(image["alt"])}"')
        if image["title"] is not None:
            attributes.append(f'title="{html.escape(image["title"])}"')
        body.append(f"<p><img {' '.join(attributes)}></p>")
    text = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>page</title>{head}"
            f"</head><body>{''.join(body)}</body></html>")
    return text.encode("utf-8")


def request_record(page: _Page) -> bytes:
    host = urllib.parse.urlsplit(page.url).netloc
    path = urllib.parse.urlsplit(page.url).path
    block = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: CCBot/2.0\r\n\r\n".encode()
    return record({"WARC-Type": "request", "WARC-Date": page.date, "WARC-Target-URI": page.url,
                   "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, page.url)}>",
                   "Content-Type": "application/http; msgtype=request"}, block)


def response_record(page: _Page) -> bytes:
    body = page_html(page, with_srcset=True)
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return record({"WARC-Type": "response", "WARC-Date": page.date,
                   "WARC-Target-URI": page.url, "WARC-Record-ID": page.record_id,
                   "Content-Type": "application/http; msgtype=response"}, head + body)


def wat_document(page: _Page) -> dict:
    """The WAT JSON of a page's response, as ia-web-commons lays it out."""
    links = []
    for image in page.images:
        link = {"path": "IMG@/src", "url": image["src"]}
        if image["alt"] is not None:
            link["alt"] = image["alt"]
        if image["title"] is not None:
            link["title"] = image["title"]
        links.append(link)
    links.append({"path": "A@/href", "url": "/about.html", "text": "about"})
    head = {"Title": "page", "Metas": [{"charset": "utf-8"}]}
    if page.base:
        head["Base"] = page.base
    return {
        "Container": {"Filename": "crawl.warc.gz", "Compressed": True},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Date": page.date,
                                     "WARC-Record-ID": page.record_id,
                                     "WARC-Target-URI": page.url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Status": "200", "Version": "HTTP/1.1"},
                    "Headers": {"Content-Type": "text/html; charset=utf-8"},
                    "HTML-Metadata": {"Head": head, "Links": links},
                },
            },
        },
    }


def wat_record(page: _Page) -> bytes:
    block = json.dumps(wat_document(page)).encode("utf-8")
    return record({"WARC-Type": "metadata", "WARC-Date": WAT_DATE, "WARC-Target-URI": page.url,
                   "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'wat' + page.url)}>",
                   "WARC-Refers-To": page.record_id, "Content-Type": "application/json"},
                  block)
