"""The fetcher against a local site, and the address policy at its decision points.

Policy tests never open a socket to a blocked address: they call the decision functions, or
check that the local site saw no request.
"""

import socket
import time

import pytest

from helpers import Route, jpeg_bytes
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.images.download import load_img2dataset
from openwit.pipeline.images.fetch import (
    Fetcher,
    address_block_reason,
    parse_retry_after,
    request_target,
    url_block_reason,
)
from openwit.pipeline.core.records import Reason

IMAGE = jpeg_bytes()


def fetcher(**overrides) -> Fetcher:
    downloader, _ = load_img2dataset()
    settings = {"allow_private_hosts": True, "timeout": 2.0, "retries": 2, **overrides}
    config = DownloadConfig(**settings)
    return Fetcher(config, downloader.is_disallowed)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://127.0.0.1/x.jpg",
    "http://10.1.2.3/x.jpg",
    "http://192.168.0.1/x.jpg",
    "http://[::1]/x.jpg",
    "http://[::ffff:127.0.0.1]/x.jpg",
    "http://[fe80::1]/x.jpg",
    "http://localhost/x.jpg",
    "http://images.localhost/x.jpg",
    "http://0.0.0.0/x.jpg",
    "http://224.0.0.1/x.jpg",
    "file:///etc/passwd",
    "ftp://example.com/x.jpg",
    "gopher://example.com/",
    "http:///x.jpg",
])
def test_blocked_urls(url):
    assert url_block_reason(url, allow_private=False) is not None


@pytest.mark.parametrize("url", [
    "http://93.184.216.34/x.jpg",
    "https://example.com/x.jpg",
    "http://[2606:2800:220:1:248:1893:25c8:1946]/x.jpg",
])
def test_public_urls_pass(url):
    assert url_block_reason(url, allow_private=False) is None


def test_private_addresses_allowed_only_on_request():
    assert address_block_reason("127.0.0.1", allow_private=True) is None
    assert address_block_reason("169.254.169.254", allow_private=False) is not None
    # Unspecified and multicast targets are never a web server.
    assert address_block_reason("0.0.0.0", allow_private=True) is not None
    assert address_block_reason("ff02::1", allow_private=True) is not None


def test_blocked_first_url_sends_nothing(site):
    site.routes["/a.jpg"] = Route(body=IMAGE)
    result = fetcher(allow_private_hosts=False).fetch(site.url("/a.jpg"))
    assert result.reason == Reason.URL_BLOCKED
    assert site.hits == {}


def test_redirect_to_a_blocked_address_is_refused_before_connecting(site):
    # 0.0.0.0 is refused even with private hosts allowed, so the check must come first.
    site.routes["/r"] = Route(status=302, headers={"Location": "http://0.0.0.0:9/x.jpg"})
    result = fetcher().fetch(site.url("/r"))
    assert result.reason == Reason.REDIRECT_BLOCKED
    assert result.final_url == "http://0.0.0.0:9/x.jpg"


def test_ok_with_user_agent_token(site):
    site.routes["/a.jpg"] = Route(body=IMAGE, headers={"Content-Type": "image/jpeg"})
    result = fetcher(user_agent_token="MyBot").fetch(site.url("/a.jpg"))
    assert result.body == IMAGE and result.reason is None
    assert "MyBot" in site.user_agents[0]


@pytest.mark.parametrize("status, reason", [
    (404, Reason.HTTP_NOT_FOUND), (403, Reason.HTTP_CLIENT_ERROR), (204, Reason.HTTP_OTHER),
])
def test_status_failures_are_not_retried(site, status, reason):
    site.routes["/x"] = Route(status=status)
    result = fetcher().fetch(site.url("/x"))
    assert result.reason == reason
    assert site.hits["/x"] == 1


def test_server_errors_are_retried_then_reported(site):
    site.routes["/x"] = Route(status=500)
    result = fetcher(retries=2).fetch(site.url("/x"))
    assert result.reason == Reason.HTTP_SERVER_ERROR
    assert site.hits["/x"] == 3 and result.attempts == 3


def test_rate_limit_then_success_waits_for_retry_after(site):
    site.routes["/x"] = Route(status=429, headers={"Retry-After": "1"}, then=[Route(body=IMAGE)])
    started = time.monotonic()
    result = fetcher().fetch(site.url("/x"))
    assert result.body == IMAGE and result.attempts == 2
    assert time.monotonic() - started >= 1.0


def test_redirects_followed_and_loops_cut(site):
    site.routes["/a.jpg"] = Route(body=IMAGE)
    site.routes["/r1"] = Route(status=301, headers={"Location": "/r2"})
    site.routes["/r2"] = Route(status=302, headers={"Location": site.url("/a.jpg")})
    site.routes["/loop"] = Route(status=302, headers={"Location": "/loop"})
    site.routes["/nowhere"] = Route(status=302)
    ok = fetcher().fetch(site.url("/r1"))
    assert ok.body == IMAGE and ok.final_url == site.url("/a.jpg")
    loop = fetcher(max_redirects=3).fetch(site.url("/loop"))
    assert loop.reason == Reason.TOO_MANY_REDIRECTS and site.hits["/loop"] == 4
    assert fetcher().fetch(site.url("/nowhere")).reason == Reason.HTTP_OTHER


@pytest.mark.parametrize("header, opted_out", [
    ("noai", True),
    ("noimageai, nofollow", True),
    ("openwit: noimageai", True),
    ("otherbot: noai", False),
    ("nofollow", False),
])
def test_x_robots_tag(site, header, opted_out):
    site.routes["/a.jpg"] = Route(body=IMAGE, headers={"X-Robots-Tag": header})
    result = fetcher().fetch(site.url("/a.jpg"))
    assert (result.reason == Reason.OPTED_OUT) == opted_out
    assert (result.body is None) == opted_out


def test_slow_headers_time_out(site):
    site.routes["/slow"] = Route(body=IMAGE, delay_before=3.0)
    started = time.monotonic()
    result = fetcher(timeout=1.0, retries=0).fetch(site.url("/slow"))
    assert result.reason == Reason.TIMEOUT
    assert time.monotonic() - started < 2.5


def test_trickled_body_is_cut_off_at_the_deadline(site):
    # Each piece arrives well within the timeout; only a whole-response deadline stops this.
    site.routes["/trickle"] = Route(body=IMAGE, trickle_seconds=4.0)
    started = time.monotonic()
    result = fetcher(timeout=1.0, retries=0).fetch(site.url("/trickle"))
    assert result.reason == Reason.TIMEOUT
    assert time.monotonic() - started < 2.5


def test_body_size_limit(site):
    site.routes["/big"] = Route(body=b"x" * (2 * 1024 * 1024))
    result = fetcher(max_bytes=1024 * 1024).fetch(site.url("/big"))
    assert result.reason == Reason.BODY_TOO_LARGE


def test_connection_refused_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetcher(retries=1).fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert result.reason == Reason.CONNECTION_ERROR and result.attempts == 2


def test_non_ascii_and_spaces_in_urls(site):
    site.routes["/caf%C3%A9%20photo.jpg?q=a%20b"] = Route(body=IMAGE)
    assert fetcher().fetch(site.url("/café photo.jpg?q=a b")).body == IMAGE


def test_request_target_quoting():
    import urllib.parse

    parts = urllib.parse.urlsplit("http://h/a b/é.jpg?x=1&y=é#frag")
    assert request_target(parts) == "/a%20b/%C3%A9.jpg?x=1&y=%C3%A9"
    assert request_target(urllib.parse.urlsplit("http://h")) == "/"
    assert request_target(urllib.parse.urlsplit("http://h/already%20quoted")) == \
        "/already%20quoted"


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
