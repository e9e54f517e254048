"""The address policy at its decision points (pure functions and injected resolutions: no
packet leaves the machine), and end to end against servers the test starts on loopback:
127.0.0.2 and [::1] are "outside the allowance" of 127.0.0.1/32."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings, strategies as st

from helpers import LocalSite, RawServer, Route, jpeg_bytes
from openwit.pipeline.core.records import Reason
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.images.download import load_img2dataset
from openwit.pipeline.images.fetch import (
    Fetcher,
    address_block_reason,
    parse_networks,
    url_block_reason,
)

LOCAL = parse_networks(["127.0.0.1/32"])


@pytest.mark.parametrize("address", [
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::5",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254, the metadata server
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata server
    "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
    "::ffff:169.254.169.254",
    "fec0::1",  # site-local
    "fc00::1", "fe80::1", "::1", "::",
])
def test_tunnels_and_translations_are_judged_by_their_ipv4(address):
    assert address_block_reason(address) is not None


@pytest.mark.parametrize("address", ["2002:5db8:d822::1", "64:ff9b::5db8:d822",
                                     "2606:2800:220:1:248:1893:25c8:1946", "93.184.216.34"])
def test_public_addresses_and_their_translations_pass(address):
    assert address_block_reason(address) is None


def test_the_allowance_lets_exactly_its_networks_through():
    assert address_block_reason("127.0.0.1", allowed_networks=LOCAL) is None
    assert address_block_reason("::ffff:127.0.0.1", allowed_networks=LOCAL) is None
    for outside in ("127.0.0.2", "::1", "10.0.0.1", "169.254.169.254", "192.168.1.1",
                    "2002:7f00:2::"):
        assert address_block_reason(outside, allowed_networks=LOCAL) is not None, outside
    assert url_block_reason("http://127.0.0.2/x.jpg", allowed_networks=LOCAL) is not None
    assert url_block_reason("http://127.0.0.1:8642/x.jpg", allowed_networks=LOCAL) is None
    # Multicast and the unspecified address stay refused even inside an allowance's reach.
    assert address_block_reason("0.0.0.0", allowed_networks=parse_networks(["10.0.0.0/8"]))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
                 st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))))
def test_the_default_policy_never_lets_a_private_address_through(address):
    ip = ipaddress.ip_address(address)
    reason = address_block_reason(address)
    targets = [ip]
    if ip.version == 6:
        targets += [t for t in (ip.ipv4_mapped, ip.sixtofour) if t is not None]
    if any(t.is_private or t.is_loopback or t.is_link_local or t.is_multicast
           or not t.is_global for t in targets):
        assert reason is not None, address
    assert reason is None or isinstance(reason, str)


def fetcher(getaddrinfo=socket.getaddrinfo, **overrides) -> Fetcher:
    downloader, _ = load_img2dataset()
    settings = {"timeout": 2.0, "retries": 0, **overrides}
    return Fetcher(DownloadConfig(**settings), downloader.is_disallowed, getaddrinfo=getaddrinfo)


@pytest.mark.parametrize("resolved", ["169.254.169.254", "10.1.2.3", "127.0.0.1", "::1",
                                      "2002:a9fe:a9fe::", "64:ff9b::a9fe:a9fe"])
def test_a_name_resolving_to_a_refused_address_is_never_connected(resolved):
    def resolve(host, port, **kwargs):
        family = socket.AF_INET6 if ":" in resolved else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (resolved, port))]

    result = fetcher(getaddrinfo=resolve).fetch("http://images.example.test/x.jpg")
    assert result.reason == Reason.URL_BLOCKED, result


def test_inside_the_allowance_is_fetched_and_outside_is_refused_without_a_request():
    site = LocalSite()
    site.routes["/x.jpg"] = Route(body=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    outside = RawServer(lambda conn, stop: conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n"),
                        host="127.0.0.2")
    try:
        client = fetcher(allowed_networks=("127.0.0.1/32",))
        assert client.fetch(site.url("/x.jpg")).body is not None
        result = client.fetch(outside.url())
        assert result.reason == Reason.URL_BLOCKED and "127.0.0.2" in result.detail
        assert outside.connections == 0
        # A redirect from inside to outside the allowance is refused the same way.
        site.routes["/hop"] = Route(status=302, headers={"Location": outside.url()})
        assert client.fetch(site.url("/hop")).reason == Reason.REDIRECT_BLOCKED
        assert outside.connections == 0
    finally:
        site.close()
        outside.close()


def test_ipv6_loopback_is_outside_an_ipv4_allowance():
    try:
        outside = RawServer(lambda conn, stop: conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n"),
                            host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        result = fetcher(allowed_networks=("127.0.0.1/32",)).fetch(outside.url())
        assert result.reason == Reason.URL_BLOCKED
        assert outside.connections == 0
    finally:
        outside.close()
