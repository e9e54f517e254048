"""Politeness: the per-host cap, cool-downs after 429/503, giving a host up, robots.txt, and
opt-outs counted by directive.

Every server here is the test's own, on 127.0.0.1 or 127.0.0.2 (a second host); addresses
the policy refuses are judged before any socket opens.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import LocalSite, Route, assert_accounted, jpeg_bytes
from openwit.pipeline.apps.cli import main
from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig
from openwit.pipeline.core.records import (
    ROBOTS_TXT_DIRECTIVE,
    Reason,
    opt_out_detail,
    opt_out_directives,
)
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.images.download import DownloadFn, load_img2dataset
from openwit.pipeline.images.fetch import FetchResult, Fetcher
from openwit.pipeline.images.hosts import HostGate, host_of
from openwit.pipeline.images.robots import (
    ROBOTS_CACHE_ORIGINS,
    RobotsCache,
    robots_url,
    verdict_from,
)

IMAGE = jpeg_bytes(size=(120, 90))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def gate(clock=None, **settings) -> HostGate:
    return HostGate(DownloadConfig(**settings), clock=clock or Clock())


def fetcher(hosts=None, **overrides) -> Fetcher:
    downloader, _ = load_img2dataset()
    settings = {"allowed_networks": ("127.0.0.1/32", "127.0.0.2/32"), "timeout": 2.0,
                "retries": 0, **overrides}
    return Fetcher(DownloadConfig(**settings), downloader.is_disallowed, hosts=hosts)


@pytest.fixture
def second_site():
    local = LocalSite("127.0.0.2")
    yield local
    local.close()


# ----------------------------------------------------------------------------- the gate


def test_slots_per_host():
    hosts = gate(max_per_host=2)
    assert hosts.try_acquire("a") and hosts.try_acquire("a")
    assert not hosts.try_acquire("a")
    assert hosts.try_acquire("b")  # another host has its own slots
    hosts.release("a")
    assert hosts.try_acquire("a")


def test_a_run_of_slow_downs_pauses_the_host_and_any_other_answer_ends_the_run():
    clock = Clock()
    hosts = gate(clock, cooldown_after=3, host_cooldown=30.0)
    for status in (429, 503, 200, 429, 503, None, 404):  # 200 and 404 end runs; None does not
        hosts.observe("a", status)
    assert not hosts.is_paused("a")
    for status in (429, 503, 429):
        hosts.observe("a", status)
    assert hosts.is_paused("a") and not hosts.try_acquire("a")
    assert hosts.seconds_until_resumed(["a", "b"]) == pytest.approx(30.0)
    assert not hosts.is_paused("b")
    clock.now += 30.0
    assert not hosts.is_paused("a") and hosts.try_acquire("a")
    assert hosts.seconds_until_resumed(["a"]) is None


@pytest.mark.parametrize("retry_after, pause", [(None, 10.0), (3.0, 10.0), (25.0, 25.0),
                                                (10_000.0, 40.0)])
def test_retry_after_lengthens_a_pause_up_to_four_times(retry_after, pause):
    clock = Clock()
    hosts = gate(clock, cooldown_after=1, host_cooldown=10.0)
    hosts.observe("a", 429, retry_after)
    assert hosts.seconds_until_resumed(["a"]) == pytest.approx(pause)


def test_answers_to_requests_sent_before_a_pause_do_not_extend_it():
    clock = Clock()
    hosts = gate(clock, cooldown_after=1, host_cooldown=10.0, max_host_cooldowns=1)
    hosts.observe("a", 429)
    clock.now += 5.0
    hosts.observe("a", 429)  # in flight when the pause began
    assert hosts.seconds_until_resumed(["a"]) == pytest.approx(5.0)
    assert not hosts.given_up("a")


def test_a_host_is_given_up_after_its_cool_downs():
    clock = Clock()
    hosts = gate(clock, cooldown_after=2, host_cooldown=1.0, max_host_cooldowns=2)
    for _ in range(2):
        hosts.observe("a", 503)
        hosts.observe("a", 503)
        assert hosts.is_paused("a") and not hosts.given_up("a")
        clock.now += 1.0
    hosts.observe("a", 503)
    hosts.observe("a", 503)
    assert hosts.given_up("a") and hosts.is_paused("a") and not hosts.try_acquire("a")
    clock.now += 1e6
    assert hosts.given_up("a")  # for good, on this worker
    assert "2 cool-downs" in hosts.describe_give_up()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acquire", "release", "observe", "tick"]),
                          st.sampled_from(["a", "b"]),
                          st.sampled_from([None, 200, 404, 429, 503]))))
def test_the_gate_never_exceeds_its_cap_whatever_happens(operations):
    clock = Clock()
    hosts = gate(clock, max_per_host=2, cooldown_after=2, host_cooldown=1.0,
                 max_host_cooldowns=1)
    held = collections.Counter()
    given_up = set()
    for operation, host, status in operations:
        if operation == "acquire" and hosts.try_acquire(host):
            held[host] += 1
        elif operation == "release" and held[host]:
            hosts.release(host)
            held[host] -= 1
        elif operation == "observe":
            hosts.observe(host, status)
        else:
            clock.now += 0.5
        assert all(0 <= n <= 2 for n in held.values())
        assert given_up <= {h for h in "ab" if hosts.given_up(h)}  # giving up is for good
        given_up = {h for h in "ab" if hosts.given_up(h)}


@given(st.text())
def test_host_of_any_text_is_a_string(text):
    assert isinstance(host_of(text), str)


def test_host_of_ignores_case_and_port():
    assert host_of("http://Images.Example.COM:8080/a.jpg") == "images.example.com"
    assert host_of("http://[::1]:99/x") == "::1"
    assert host_of("not a url") == "" and host_of("http://[bad/") == ""


# ------------------------------------------------------------------- the fetcher and gate


def test_a_paused_host_is_not_asked(site):
    site.routes["/a.jpg"] = Route(body=IMAGE)
    hosts = gate(cooldown_after=1, host_cooldown=60.0)
    hosts.observe("127.0.0.1", 429)
    result = fetcher(hosts).fetch(site.url("/a.jpg"))
    assert result.deferred and result.body is None and site.hits == {}


def test_a_fetch_does_not_retry_into_a_pause(site):
    site.routes["/a.jpg"] = Route(status=503, then=[Route(body=IMAGE)])
    hosts = gate(cooldown_after=1, host_cooldown=60.0)
    result = fetcher(hosts, retries=2).fetch(site.url("/a.jpg"))
    assert result.deferred and result.status == 503 and site.hits["/a.jpg"] == 1


# ------------------------------------------------------------------ the download scheduler


def run_download(config: DownloadConfig, urls: list[str], after_setup=None):
    """Drive the download DoFn as a runner would: setup, one bundle, teardown. Returns
    (samples, failures); every candidate must end exactly once."""
    from apache_beam.pvalue import TaggedOutput
    from apache_beam.utils.windowed_value import WindowedValue

    fn = DownloadFn(config)
    fn.setup()
    if after_setup is not None:
        after_setup(fn)
    fn.start_bundle()
    outputs = []
    try:
        for index, url in enumerate(urls):
            candidate = {"key": f"{index:04d}", "url": url, "caption": "c", "queries": []}
            outputs.extend(fn.process((0, candidate)))
        outputs.extend(fn.finish_bundle())
    finally:
        fn.teardown()
    samples, failures = [], []
    for output in outputs:
        kept = not isinstance(output, TaggedOutput)
        value = output if kept else output.value
        if isinstance(value, WindowedValue):
            value = value.value
        (samples if kept else failures).append(value[1])
    ended = sorted(record["key"] for record in samples + failures)
    assert ended == [f"{index:04d}" for index in range(len(urls))]
    return samples, failures


def download_config(**overrides) -> DownloadConfig:
    settings = {"allowed_networks": ("127.0.0.1/32", "127.0.0.2/32"), "timeout": 5.0,
                "retries": 0, "image_size": 64, **overrides}
    return DownloadConfig(**settings)


def test_the_cap_holds_per_host_and_other_hosts_go_on(site, second_site):
    """One host dominates the list; with 2 requests to it at once, the other host's
    candidates (last in the list) are still fetched while the first host's wait."""
    for local in (site, second_site):
        for i in range(24):
            local.routes[f"/{i}.jpg"] = Route(body=IMAGE, delay_before=0.1)
    urls = [site.url(f"/{i}.jpg") for i in range(24)] + [second_site.url(f"/{i}.jpg")
                                                          for i in range(4)]
    samples, failures = run_download(download_config(threads=8, max_per_host=2), urls)
    assert len(samples) == 28 and not failures
    assert site.peak_in_flight == 2 and second_site.peak_in_flight == 2
    last_on_first = max(when for when, _ in site.request_times)
    assert max(when for when, _ in second_site.request_times) < last_on_first


def test_a_host_that_slows_us_down_is_paused(site):
    for i in range(3):
        site.routes[f"/busy{i}.jpg"] = Route(status=503)
    for i in range(3):
        site.routes[f"/ok{i}.jpg"] = Route(body=IMAGE)
    urls = [site.url(f"/busy{i}.jpg") for i in range(3)] + [site.url(f"/ok{i}.jpg")
                                                            for i in range(3)]
    config = download_config(threads=4, max_per_host=1, cooldown_after=3, host_cooldown=0.6)
    samples, failures = run_download(config, urls)
    assert len(samples) == 3
    assert collections.Counter(f["reason"] for f in failures) == {Reason.HTTP_SERVER_ERROR: 3}
    times = dict((path, when) for when, path in site.request_times)
    assert times["/ok0.jpg"] - times["/busy2.jpg"] >= 0.55  # nothing asked during the pause


def test_a_deferred_candidate_is_fetched_after_the_pause(site):
    site.routes["/a.jpg"] = Route(status=429, then=[Route(body=IMAGE)])
    config = download_config(threads=2, retries=1, cooldown_after=1, host_cooldown=0.4)
    samples, failures = run_download(config, [site.url("/a.jpg")])
    assert len(samples) == 1 and not failures and site.hits["/a.jpg"] == 2
    (first, _), (second, _) = site.request_times
    assert second - first >= 0.35


def test_a_fetch_cut_off_as_stuck_keeps_its_host_slot_until_it_ends(site):
    for i in range(3):
        site.routes[f"/{i}.jpg"] = Route(body=IMAGE, delay_before=0.8)

    def impatient(fn):
        fn._stuck_after = 0.3

    config = download_config(threads=4, max_per_host=1)
    samples, failures = run_download(config, [site.url(f"/{i}.jpg") for i in range(3)],
                                     after_setup=impatient)
    assert {f["reason"] for f in failures} == {Reason.TIMEOUT} and len(failures) == 3
    assert site.peak_in_flight == 1


def test_a_redirect_targets_slow_downs_pause_the_target(site, second_site):
    site.routes["/go.jpg"] = Route(status=302, headers={"Location": second_site.url("/x.jpg")})
    second_site.routes["/x.jpg"] = Route(status=429)
    hosts = gate(cooldown_after=1, host_cooldown=60.0)
    result = fetcher(hosts, retries=1).fetch(site.url("/go.jpg"))
    assert result.deferred and second_site.hits["/x.jpg"] == 1
    assert hosts.is_paused("127.0.0.2") and not hosts.is_paused("127.0.0.1")


def test_a_gate_without_slots_is_refused():
    with pytest.raises(ValueError):
        gate(max_per_host=0)


def test_a_host_that_never_recovers_is_given_up(site, second_site):
    for i in range(20):
        site.routes[f"/{i}.jpg"] = Route(status=429)
    second_site.routes["/fine.jpg"] = Route(body=IMAGE)
    urls = [site.url(f"/{i}.jpg") for i in range(20)] + [second_site.url("/fine.jpg")]
    config = download_config(threads=4, max_per_host=1, cooldown_after=2, host_cooldown=0.2,
                             max_host_cooldowns=1)
    samples, failures = run_download(config, urls)
    reasons = collections.Counter(f["reason"] for f in failures)
    assert reasons == {Reason.HTTP_RATE_LIMITED: 4, Reason.HOST_BACKED_OFF: 16}
    assert sum(site.hits.values()) == 4 and len(samples) == 1
    backed_off = next(f for f in failures if f["reason"] == Reason.HOST_BACKED_OFF)
    assert "cool-downs" in backed_off["detail"]


# ------------------------------------------------------------------------------ robots.txt


ROBOTS = (b"User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\n"
          b"Disallow: /*.png$\nAllow: /private/open/\n")


@pytest.mark.parametrize("path, allowed", [
    ("/a.jpg", True), ("/private/a.jpg", False), ("/private/open/a.jpg", True),
    ("/x/a.png", False), ("/x/a.png?v=1", True),
])
def test_robots_txt_rules_are_obeyed(site, path, allowed):
    site.routes["/robots.txt"] = Route(body=ROBOTS)
    site.routes[path] = Route(body=IMAGE)
    result = fetcher(robots_txt=True).fetch(site.url(path))
    assert (result.body == IMAGE) == allowed
    if not allowed:
        assert result.reason == Reason.OPTED_OUT and site.hits.get(path) is None
        assert opt_out_directives(result.detail) == [ROBOTS_TXT_DIRECTIVE]
        assert site.url("/robots.txt") in result.detail


def test_robots_txt_is_not_read_unless_asked(site):
    site.routes["/private/a.jpg"] = Route(body=IMAGE)
    assert fetcher().fetch(site.url("/private/a.jpg")).body == IMAGE
    assert "/robots.txt" not in site.hits


@pytest.mark.parametrize("robots, allowed, reason", [
    (Route(status=404), True, None),
    (Route(status=403), True, None),  # RFC 9309: any 4xx but 429 is "unavailable"
    (Route(status=429), False, Reason.ROBOTS_UNREACHABLE),
    (Route(status=500), False, Reason.ROBOTS_UNREACHABLE),
    (Route(status=503), False, Reason.ROBOTS_UNREACHABLE),
    (Route(status=200, body=b""), True, None),
    (Route(status=200, body=b"\xff\xfe\x00garbage\nDisallow: /\n"), True, None),  # no group
    # Over 500 KiB: the first 500 KiB count, the rest is ignored (RFC 9309, 2.5).
    (Route(status=200, body=b"User-agent: *\n" + b"Disallow: /x\n" * 50_000), True, None),
    (Route(status=200, body=b"User-agent: *\nDisallow: /a.jpg\n" + b"# pad\n" * 100_000),
     False, Reason.OPTED_OUT),
    (Route(status=200, body=b"User-agent: *\n" + b"# pad\n" * 100_000 + b"Disallow: /a.jpg\n"),
     True, None),
    (Route(status=200, body=ROBOTS, delay_before=3.0), False, Reason.ROBOTS_UNREACHABLE),
    (Route(status=301, headers={"Location": "/elsewhere/robots.txt"}), False, Reason.OPTED_OUT),
    (Route(status=302), True, None),  # a redirect to nowhere: unavailable
    (Route(status=304), True, None),
])
def test_robots_txt_answers(site, robots, allowed, reason):
    site.routes["/robots.txt"] = robots
    site.routes["/elsewhere/robots.txt"] = Route(body=b"User-agent: *\nDisallow: /a.jpg\n")
    site.routes["/a.jpg"] = Route(body=IMAGE)
    result = fetcher(robots_txt=True, timeout=1.0).fetch(site.url("/a.jpg"))
    assert (result.body == IMAGE) == allowed, result
    if not allowed:
        assert result.reason == reason and "/a.jpg" not in site.hits


def test_robots_txt_redirects_are_followed_even_where_images_are_not(site):
    # RFC 9309: at least five redirects for robots.txt, whatever --max-redirects says.
    site.routes["/robots.txt"] = Route(status=301, headers={"Location": "/r1"})
    site.routes["/r1"] = Route(status=301, headers={"Location": "/real-robots.txt"})
    site.routes["/real-robots.txt"] = Route(body=b"User-agent: *\nDisallow: /\n")
    site.routes["/a.jpg"] = Route(body=IMAGE)
    result = fetcher(robots_txt=True, max_redirects=0).fetch(site.url("/a.jpg"))
    assert result.reason == Reason.OPTED_OUT and "/a.jpg" not in site.hits


def test_a_robots_txt_redirect_to_a_refused_address_disallows(site):
    # Judged by the address policy before any socket opens.
    site.routes["/robots.txt"] = Route(status=302, headers={"Location": "http://10.0.0.1/r"})
    site.routes["/a.jpg"] = Route(body=IMAGE)
    result = fetcher(robots_txt=True).fetch(site.url("/a.jpg"))
    assert result.reason == Reason.ROBOTS_UNREACHABLE and "redirect_blocked" in result.detail


def test_each_redirect_hop_obeys_its_own_origins_robots_txt(site, second_site):
    site.routes["/robots.txt"] = Route(body=b"User-agent: *\nAllow: /\n")
    site.routes["/go.jpg"] = Route(status=302, headers={"Location": second_site.url("/p/a.jpg")})
    second_site.routes["/robots.txt"] = Route(body=b"User-agent: *\nDisallow: /p/\n")
    second_site.routes["/p/a.jpg"] = Route(body=IMAGE)
    result = fetcher(robots_txt=True).fetch(site.url("/go.jpg"))
    assert result.reason == Reason.OPTED_OUT and second_site.url("/robots.txt") in result.detail
    assert "/p/a.jpg" not in second_site.hits


def test_robots_txt_is_fetched_once_per_origin_by_concurrent_fetches(site):
    site.routes["/robots.txt"] = Route(body=ROBOTS, delay_before=0.3)
    for i in range(16):
        site.routes[f"/{i}.jpg"] = Route(body=IMAGE)
    shared = fetcher(robots_txt=True)
    results = [None] * 16

    def run(i):
        results[i] = shared.fetch(site.url(f"/{i}.jpg"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.body == IMAGE for r in results) and site.hits["/robots.txt"] == 1


def test_the_robots_cache_is_bounded_and_expires():
    fetched = collections.Counter()
    clock = Clock()

    def fetch_robots(url):
        fetched[url] += 1
        return FetchResult(b"User-agent: *\nDisallow: /no\n", status=200)

    cache = RobotsCache(fetch_robots, "openwit", wait_seconds=1.0, clock=clock)
    for i in range(ROBOTS_CACHE_ORIGINS + 10):
        cache.refusal(f"http://h{i}.test/a.jpg")
    assert len(cache._entries) == ROBOTS_CACHE_ORIGINS
    cache.refusal("http://h0.test/b.jpg")  # evicted: fetched again
    cache.refusal(f"http://h{ROBOTS_CACHE_ORIGINS + 9}.test/b.jpg")  # still cached
    assert fetched["http://h0.test/robots.txt"] == 2
    assert fetched[f"http://h{ROBOTS_CACHE_ORIGINS + 9}.test/robots.txt"] == 1
    clock.now += 24 * 3600 + 1
    assert cache.refusal(f"http://h{ROBOTS_CACHE_ORIGINS + 9}.test/no") is not None
    assert fetched[f"http://h{ROBOTS_CACHE_ORIGINS + 9}.test/robots.txt"] == 2


def test_robots_url_is_per_origin():
    assert robots_url("https://Img.Example.com:8443/a/b.jpg?x=1") == \
        "https://img.example.com:8443/robots.txt"
    assert robots_url("http://[2001:db8::1]/a") == "http://[2001:db8::1]/robots.txt"
    assert robots_url("ftp://example.com/a") is None and robots_url("nonsense") is None


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=2000), path=st.text(max_size=200))
def test_any_robots_txt_gives_a_verdict_on_any_path(body, path):
    verdict = verdict_from("http://h.test/robots.txt", FetchResult(body, status=200), 0.0)
    refusal = verdict.refusal("http://h.test/" + path, "openwit")
    assert refusal is None or refusal[0] in (Reason.OPTED_OUT, Reason.ROBOTS_UNREACHABLE)


@settings(max_examples=100, deadline=None)
@given(status=st.integers(100, 599), reason=st.sampled_from(
    [Reason.HTTP_NOT_FOUND, Reason.HTTP_CLIENT_ERROR, Reason.HTTP_SERVER_ERROR,
     Reason.HTTP_RATE_LIMITED, Reason.HTTP_OTHER, Reason.TIMEOUT, Reason.CONNECTION_ERROR,
     Reason.BODY_TOO_LARGE, Reason.TOO_MANY_REDIRECTS, Reason.REDIRECT_BLOCKED]))
def test_any_failed_robots_fetch_gives_a_verdict(status, reason):
    verdict = verdict_from("http://h.test/robots.txt", FetchResult(None, reason, status=status),
                           0.0)
    refusal = verdict.refusal("http://h.test/a.jpg", "openwit")
    if reason in (Reason.HTTP_SERVER_ERROR, Reason.TIMEOUT, Reason.CONNECTION_ERROR,
                  Reason.BODY_TOO_LARGE, Reason.REDIRECT_BLOCKED) or status == 429:
        assert refusal[0] == Reason.ROBOTS_UNREACHABLE
    elif reason in (Reason.HTTP_NOT_FOUND, Reason.HTTP_CLIENT_ERROR, Reason.TOO_MANY_REDIRECTS):
        assert refusal is None  # "unavailable": everything allowed


# --------------------------------------------------------------------- opt-out directives


@pytest.mark.parametrize("header, directives", [
    ("noai", ["noai"]),
    ("noimageai, noai, nofollow", ["noai", "noimageai"]),
    ("openwit: noimageai", ["noimageai"]),
])
def test_x_robots_tag_opt_outs_name_their_directives(site, header, directives):
    site.routes["/a.jpg"] = Route(body=IMAGE, headers={"X-Robots-Tag": header})
    result = fetcher().fetch(site.url("/a.jpg"))
    assert result.reason == Reason.OPTED_OUT
    assert opt_out_directives(result.detail) == directives and header in result.detail


@given(st.lists(st.from_regex(r"[a-z.]{1,12}", fullmatch=True), min_size=1, max_size=4),
       st.text())
def test_opt_out_details_give_back_their_directives(directives, evidence):
    assert opt_out_directives(opt_out_detail(directives, evidence)) == directives


# ------------------------------------------------------------- end to end, on many hosts


@pytest.mark.slow
def test_build_on_three_hosts_is_polite_to_each(tmp_path):
    config = WorldConfig(samples=300, seed=3, hosts=3, eval_images_per_class=1,
                         slow_headers_rate=0.0, trickle_rate=0.0)
    with MiniWeb(config, tmp_path / "web") as web:
        output = tmp_path / "corpus"
        assert main(["build", "--candidates", str(web.candidates_path), "--output", str(output),
                     "--languages", "any", "--allow-network", "127.0.0.0/30",
                     "--robots-txt", "true", "--max-per-host", "2",
                     "--download-threads", "16", "--timeout", "3",
                     "--samples-per-shard", "100"]) == 0
        peaks = web.peak_requests_in_flight()
        robots = web.robots_txt_requests()
    assert len(peaks) == 3 and all(1 <= peak <= 2 for peak in peaks.values()), peaks
    assert all(1 <= n <= 3 for n in robots.values()), robots
    stats = json.loads((output / "stats.json").read_text())
    private = sum(1 for row in web.world.rows if row.kind == "robots_disallowed")
    assert stats["opted_out_by_directive"].get(ROBOTS_TXT_DIRECTIVE) == private
    assert_accounted(output)


def test_politeness_flags_are_validated():
    from openwit.pipeline.core.errors import ConfigError
    from openwit.pipeline.images.config import CapConfig, ImageHalfConfig, ShardConfig

    for bad in ({"max_per_host": 0}, {"cooldown_after": 0}, {"host_cooldown": -1.0},
                {"host_cooldown": float("nan")}, {"max_host_cooldowns": -1}):
        config = ImageHalfConfig(CapConfig(), dataclasses.replace(DownloadConfig(), **bad),
                                 ShardConfig(output="x"))
        with pytest.raises(ConfigError):
            config.validate()
