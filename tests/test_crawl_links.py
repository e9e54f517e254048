"""Image links as pages write them -> absolute, normalised URLs (`pipeline/crawl/links.py`)."""

import urllib.parse

import pytest
from hypothesis import given, settings, strategies as st

from openwit.pipeline.crawl.links import (
    Base,
    LinkDrop,
    image_url,
    largest_in_srcset,
    normalise,
    resolve_base,
)

PAGE = "https://Example.COM/dir/sub/page.html?x=1#top"


@pytest.mark.parametrize("src, expected", [
    ("https://cdn.example.org/a.jpg", "https://cdn.example.org/a.jpg"),
    ("/img/a.jpg", "https://example.com/img/a.jpg"),  # root-relative
    ("a.jpg", "https://example.com/dir/sub/a.jpg"),  # relative to the page's folder
    ("../a.jpg", "https://example.com/dir/a.jpg"),
    ("../../../../a.jpg", "https://example.com/a.jpg"),  # above the root stays at the root
    ("./x/./y/../a.jpg?s=2", "https://example.com/dir/sub/x/a.jpg?s=2"),
    ("//cdn.example.org/a.jpg", "https://cdn.example.org/a.jpg"),  # protocol-relative
    ("  \n/img/a.jpg\t ", "https://example.com/img/a.jpg"),  # HTML strips whitespace
    ("/img/a\n.jpg", "https://example.com/img/a.jpg"),  # browsers drop newlines in URLs
    ("a.jpg#frag", "https://example.com/dir/sub/a.jpg"),  # the fragment is no part of it
    ("HTTPS://CDN.Example.ORG:443/A.jpg", "https://cdn.example.org/A.jpg"),  # path case kept
    ("http://cdn.example.org:80/a.jpg", "http://cdn.example.org/a.jpg"),
    ("http://cdn.example.org:8080/a.jpg", "http://cdn.example.org:8080/a.jpg"),
    ("http://[2001:DB8::1]:8080/a.jpg", "http://[2001:db8::1]:8080/a.jpg"),
    ("?v=2", "https://example.com/dir/sub/page.html?v=2"),
    ("https://example.org", "https://example.org/"),
])
def test_every_form_of_link_resolves_against_the_page(src, expected):
    assert image_url(src, PAGE) == (expected, None)


@pytest.mark.parametrize("src, reason", [
    ("data:image/png;base64,iVBORw0KGgo=", LinkDrop.DATA_URI),
    (" DATA:image/gif;base64,R0lG", LinkDrop.DATA_URI),
    ("javascript:void(0)", LinkDrop.NOT_HTTP),
    ("mailto:a@example.org", LinkDrop.NOT_HTTP),
    ("ftp://example.org/a.jpg", LinkDrop.NOT_HTTP),
    ("blob:https://example.org/uuid", LinkDrop.NOT_HTTP),
    ("", LinkDrop.EMPTY_SRC),
    ("   ", LinkDrop.EMPTY_SRC),
    (None, LinkDrop.EMPTY_SRC),
    ("http://", LinkDrop.INVALID_URL),
    ("http://example.org:99999/a.jpg", LinkDrop.INVALID_URL),
    ("http://[::1/a.jpg", LinkDrop.INVALID_URL),
    ("/a\x00.jpg", LinkDrop.INVALID_URL),
    ("/" + "a" * 9000 + ".jpg", LinkDrop.INVALID_URL),
])
def test_links_that_are_no_image_url_say_why(src, reason):
    assert image_url(src, PAGE) == (None, reason)


@pytest.mark.parametrize("base, src, expected", [
    ("/static/", "a.jpg", "https://example.com/static/a.jpg"),
    ("https://cdn.example.org/v2/", "a.jpg", "https://cdn.example.org/v2/a.jpg"),
    ("../", "a.jpg", "https://example.com/dir/a.jpg"),  # a relative base, against the page
    ("//cdn.example.org/x/", "a.jpg", "https://cdn.example.org/x/a.jpg"),
    ("  ", "a.jpg", "https://example.com/dir/sub/a.jpg"),  # an empty base is no base
    ("javascript:alert(1)", "a.jpg", "https://example.com/dir/sub/a.jpg"),
    (None, "/a.jpg", "https://example.com/a.jpg"),
])
def test_a_base_href_is_what_relative_links_resolve_against(base, src, expected):
    assert image_url(src, resolve_base(PAGE, base)) == (expected, None)


@pytest.mark.parametrize("srcset, expected", [
    ("small.jpg 320w, large.jpg 1024w, medium.jpg 640w", "large.jpg"),
    ("a.jpg 1x, b.jpg 2x", "b.jpg"),
    ("a.jpg, b.jpg 1.5x", "b.jpg"),  # no descriptor is 1x
    ("a.jpg 2x, b.jpg 2x", "a.jpg"),  # equals: the first
    ("/img,w_480/a.jpg 480w, /img,w_960/a.jpg 960w", "/img,w_960/a.jpg"),  # commas in URLs
    ("  a.jpg   100w  ,\n b.jpg 50w ", "a.jpg"),
    ("a.jpg 100h, b.jpg 1x", "b.jpg"),  # a height alone is no size
    ("a.jpg 0w, b.jpg", "b.jpg"),
    ("a.jpg garbage", None),
    ("", None),
    (None, None),
    (",,,", None),
    ("a.jpg,b.jpg 2x", "a.jpg,b.jpg"),  # a comma inside a URL is part of it (HTML)
])
def test_srcset_gives_its_largest_candidate(srcset, expected):
    assert largest_in_srcset(srcset) == expected


@given(st.text(max_size=300))
def test_any_src_gives_a_url_or_a_reason(src):
    url, reason = image_url(src, PAGE)
    assert (url is None) != (reason is None)
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.hostname and not parts.fragment
        assert normalise(url) == (url, None)  # normalising twice changes nothing


@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=100)))
def test_any_base_and_src_give_a_url_or_a_reason(src, base):
    url, reason = image_url(src, resolve_base(PAGE, base))
    assert (url is None) != (reason is None)


@given(st.text(max_size=300))
def test_any_srcset_gives_one_of_its_words_or_none(srcset):
    chosen = largest_in_srcset(srcset)
    assert chosen is None or chosen in srcset


URL_CHARACTERS = st.sampled_from(list("abcXYZ019-._~!$&'()*+,;=:@%/?#[] \t\nä.") + ["/.", "../",
                                                                                   "//", "?"])
BASES = ["http://h.example/a/b.html", "https://H.Example:443/a/./b/?q=1", "http://h.example",
         "http://h.example:8080/a/b;p?q#f", "http://u:p@h.example/a/", "http://[::1]/x/y",
         "http://h.example/a/%7Eb/c"]


@settings(max_examples=1000)
@given(st.lists(URL_CHARACTERS, max_size=12).map("".join), st.sampled_from(BASES),
       st.sampled_from(["", "http://h.example/", "https://cdn.example/", "/", "//cdn.example/"]))
def test_the_shortcut_for_plain_links_gives_urllibs_answer(tail, base, prefix):
    src = prefix + tail
    assert image_url(src, Base(base)) == image_url(src, base), (src, base)


@settings(max_examples=1000)
@given(st.lists(URL_CHARACTERS, max_size=10).map("".join),
       st.lists(URL_CHARACTERS, max_size=10).map("".join),
       st.sampled_from(["http://h.example/", "https://h.example/a/", "http://h.example/a?b/"]))
def test_the_shortcut_for_plain_pages_gives_urllibs_answer(tail, base_tail, base_prefix):
    base = base_prefix + base_tail
    for src in (tail, "/" + tail, "x/" + tail, "http://o.example/" + tail):
        assert image_url(src, Base(base)) == image_url(src, base), (src, base)
