"""Image links as a page writes them -> absolute, normalised image URLs (or why not).

A page's `<img src>` may be absolute, root-relative (`/a.jpg`), relative (`a.jpg`, `../a.jpg`),
protocol-relative (`//cdn.example/a.jpg`) or relative to the page's `<base href>`, which may
itself be relative to the page. Public reproductions found that dropping the relative ones
loses about 40% of the pairs, so every form is resolved (`urllib.parse.urljoin`, RFC 3986).
The result keeps only what names the image: the fragment is removed, scheme and host are
lower-cased, a default port is dropped. `data:` URIs and schemes that are not http(s) are no
fetchable URL and are counted by reason.

`srcset` (`a.jpg 1x, b.jpg 2x` or `a.jpg 480w, b.jpg 1080w`) names several renditions of one
image; `largest_in_srcset` picks the largest, as a crawler that wants the best pixels would.
"""

from __future__ import annotations

import re
import urllib.parse

FETCHABLE_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8192  # as for candidate lists (text/read.py): longer is no image URL
_SPACE = " \t\n\r\f"  # HTML's ASCII whitespace: attribute values are stripped of it
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LinkDrop:
    """Why an image link is no candidate URL. Stable strings: the stats count by them."""

    DATA_URI = "data_uri"
    NOT_HTTP = "not_http"  # javascript:, mailto:, ftp:, blob:, ...
    EMPTY_SRC = "empty_src"
    INVALID_URL = "invalid_url"  # unparsable, no host, too long, control characters


def resolve_base(page_url: str, base_href: str | None) -> str:
    """The URL relative links resolve against: `<base href>` (itself resolved against the
    page), else the page."""
    if base_href is None:
        return page_url
    href = base_href.strip(_SPACE)
    if not href:
        return page_url
    try:
        base = urllib.parse.urljoin(page_url, href)
    except ValueError:
        return page_url
    # A base that is no http(s) URL cannot resolve a fetchable link: browsers fall back too.
    return base if urllib.parse.urlsplit(base).scheme.lower() in FETCHABLE_SCHEMES else page_url


# Links that resolve and normalise to themselves (after the base's origin or folder): ASCII
# URL characters, no dot segment, empty segment, fragment, port, scheme or empty query. Most links are these,
# and joining strings is many times faster than urllib's split, join and unsplit (RESULTS.md);
# tests/test_crawl_links.py checks the shortcut gives urllib's answer for any link.
_PLAIN = r"[A-Za-z0-9\-._~!$&'()*+,=@%/?]*"  # no ";": urllib splits path parameters off
_PLAIN_ABSOLUTE = re.compile(r"https?://[a-z0-9\-.]+/" + _PLAIN)
_PLAIN_ROOTED = re.compile(r"/(?!/)" + _PLAIN)
_PLAIN_RELATIVE = re.compile(r"[A-Za-z0-9\-_~!$&'()*+,=@%]" + _PLAIN)


class Base:
    """What a page's relative links resolve against, with its origin and folder worked out
    once for all of the page's links."""

    def __init__(self, url: str):
        self.url = url
        self._origin = self._folder = None
        if _is_plain_absolute(url):  # most pages: their origin and folder are substrings
            path_start = url.index("/", url.index("://") + 3)
            path = url.split("?", 1)[0]
            self._origin, self._folder = url[:path_start], path[:path.rindex("/") + 1]
            return
        try:
            origin, _ = normalise(urllib.parse.urljoin(url, "/x"))
            folder, _ = normalise(urllib.parse.urljoin(url, "x"))
        except ValueError:
            return
        if origin is not None and folder is not None:
            self._origin, self._folder = origin[:-2], folder[:-1]  # less "/x", "x"

    def plain_join(self, src: str) -> str | None:
        """The resolved, normalised URL of a plain link, or None for any other link."""
        if _is_plain_absolute(src):
            return src
        # urllib resolves dot segments and drops empty ones ("a//b"): those take its path, as
        # does every absolute link that is not plain (it holds "//").
        if "/." in src or src.endswith("?") or "//" in src or self._origin is None:
            return None
        if _PLAIN_ROOTED.fullmatch(src):
            return self._origin + src
        if _PLAIN_RELATIVE.fullmatch(src) and not src.startswith("."):
            return self._folder + src
        return None


def _is_plain_absolute(url: str) -> bool:
    return (_PLAIN_ABSOLUTE.fullmatch(url) is not None and "/." not in url
            and not url.endswith("?") and "//" not in url.split("://", 1)[1])


def image_url(src: str | None, base: "str | Base") -> tuple[str | None, str | None]:
    """(the absolute, normalised URL, None) or (None, a `LinkDrop` reason). `base` is a URL,
    or a `Base` made once per page."""
    if isinstance(base, Base):
        if src is not None and len(src) <= MAX_URL_CHARS:
            plain = base.plain_join(src)
            if plain is not None and len(plain) <= MAX_URL_CHARS:
                return plain, None
        base = base.url
    if src is None:
        return None, LinkDrop.EMPTY_SRC
    src = src.strip(_SPACE)
    if not src:
        return None, LinkDrop.EMPTY_SRC
    if src[:5].lower() == "data:":
        return None, LinkDrop.DATA_URI
    if len(src) > MAX_URL_CHARS:
        return None, LinkDrop.INVALID_URL
    # Browsers drop tabs and newlines inside URLs (WHATWG URL parsing); other controls are bad.
    src = src.replace("\t", "").replace("\n", "").replace("\r", "")
    if _CONTROL.search(src):
        return None, LinkDrop.INVALID_URL
    try:
        absolute = urllib.parse.urljoin(base, src)
        return normalise(absolute)
    except ValueError:  # an invalid port or IPv6 literal
        return None, LinkDrop.INVALID_URL


def normalise(url: str) -> tuple[str | None, str | None]:
    """An absolute URL with its fragment removed, scheme and host lower-cased and a default
    port dropped; or (None, reason) when it is not a fetchable http(s) URL."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "data":
        return None, LinkDrop.DATA_URI
    if scheme not in FETCHABLE_SCHEMES:
        return None, LinkDrop.NOT_HTTP
    host = parts.hostname  # lower-cased by urllib, brackets of an IPv6 literal removed
    if not host:
        return None, LinkDrop.INVALID_URL
    port = parts.port  # raises ValueError for a port that is not a number in range
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{netloc}"
    path = parts.path or "/"
    result = urllib.parse.urlunsplit((scheme, netloc, path, parts.query, ""))
    if len(result) > MAX_URL_CHARS:
        return None, LinkDrop.INVALID_URL
    return result, None


_DESCRIPTOR = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)([wx])$")


def largest_in_srcset(srcset: str | None) -> str | None:
    """The URL of the largest candidate in a `srcset` attribute, or None if it has none.

    Candidates are `URL [descriptor]`, separated by commas; a URL may itself contain commas
    (`/img,w_480/a.jpg`), so a candidate's URL runs to the first whitespace, as in the HTML
    standard's parser. Width descriptors (`480w`) beat density ones (`2x`) when a set mixes
    them (it should not); a candidate with no descriptor is `1x`."""
    if not srcset:
        return None
    best: tuple[int, float, int] | None = None
    best_url = None
    position, text, order = 0, srcset, 0
    while position < len(text):
        while position < len(text) and (text[position] in _SPACE or text[position] == ","):
            position += 1
        if position >= len(text):
            break
        end = position
        while end < len(text) and text[end] not in _SPACE:
            end += 1
        url = text[position:end]
        descriptor = ""
        if url.endswith(","):  # `a.jpg,b.jpg`: the comma ends the candidate
            url = url.rstrip(",")
        else:
            comma = text.find(",", end)
            descriptor = text[end:comma if comma >= 0 else len(text)].strip(_SPACE)
            end = comma + 1 if comma >= 0 else len(text)
        position = end
        if not url:
            continue
        rank = _rank(descriptor)
        if rank is None:
            continue
        order += 1
        # Largest first; among equals the first written, as a browser would pick.
        key = (rank[0], rank[1], -order)
        if best is None or key > best:
            best, best_url = key, url
    return best_url


def _rank(descriptor: str) -> tuple[int, float] | None:
    """(1 for a width, 0 for a density; the value), or None for a descriptor that is no
    size (a height alone, garbage)."""
    if not descriptor:
        return 0, 1.0
    size = next((d for d in descriptor.split() if _DESCRIPTOR.match(d)), None)
    if size is None:
        return None
    value = float(size[:-1])
    if value <= 0:
        return None
    return (1, value) if size.endswith("w") else (0, value)
