"""Tests for the mini-web: world generation, rendering, files and the HTTP server.

Every network call goes to 127.0.0.1 on a port the OS picked for the test.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import struct
import threading
import time
import urllib.request
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image, UnidentifiedImageError

from openwit.pipeline.apps.miniweb import (
    CAPTION_NOISES,
    FOREIGN_LANGUAGES,
    KINDS,
    SHAPES,
    ItemSpec,
    MiniWeb,
    WorldConfig,
    bomb_png,
    describe,
    eval_specs,
    generate_world,
    query_words,
    render_item,
)
from openwit.pipeline.apps.miniweb.captions import _BOILERPLATE, INTERNATIONAL_WORDS, PLURALS
from openwit.pipeline.apps.miniweb.world import ROBOTS_DISALLOWED_FOLDER

SMALL = WorldConfig(samples=300, seed=7, eval_images_per_class=3, slow_seconds=5)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(url: str, timeout: float = 5.0) -> Response:
    """One GET without following redirects."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Response(response.status, headers, response.read())
    finally:
        connection.close()


def decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def request_threads() -> int:
    """Live server handler threads (socketserver names them after their target)."""
    return sum(1 for thread in threading.enumerate() if "process_request_thread" in thread.name)


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with MiniWeb(SMALL, tmp_path_factory.mktemp("miniweb")) as running:
        yield running


@pytest.fixture(scope="module")
def truth(web) -> list[dict]:
    return pq.read_table(web.ground_truth_path).to_pylist()


def rows_of(truth: list[dict], kind: str) -> list[dict]:
    return [row for row in truth if row["kind"] == kind]


def url_of(truth: list[dict], kind: str) -> str:
    return rows_of(truth, kind)[0]["url"]


# --------------------------------------------------------------------------
# Generation


def test_same_seed_same_world_and_bytes(tmp_path):
    config = replace(SMALL, eval_images_per_class=2)
    with MiniWeb(config, tmp_path / "a") as first, MiniWeb(config, tmp_path / "b") as second:
        assert first.base_url != second.base_url
        tables = []
        for running in (first, second):
            table = pq.read_table(running.ground_truth_path).to_pylist()
            for row in table:
                for column in ("url", "duplicate_of"):
                    if row[column]:
                        row[column] = row[column].replace(running.base_url, "BASE")
            tables.append(table)
        assert tables[0] == tables[1]
        candidates = [pq.read_table(running.candidates_path).to_pylist() for running in (first, second)]
        assert [row["caption"] for row in candidates[0]] == [row["caption"] for row in candidates[1]]

        image_rows = [row for row in tables[0] if row["kind"] in ("ok", "exact_dup", "near_dup", "tiny")][:25]
        for row in image_rows:
            path = row["url"].replace("BASE", "")
            assert fetch(first.base_url + path).body == fetch(second.base_url + path).body

        for class_dir in sorted(first.eval_dir.iterdir()):
            for image_path in sorted(class_dir.iterdir()):
                twin = second.eval_dir / class_dir.name / image_path.name
                assert image_path.read_bytes() == twin.read_bytes()


def test_different_seed_different_world():
    first = generate_world(SMALL, "http://127.0.0.1:1")
    second = generate_world(replace(SMALL, seed=SMALL.seed + 1), "http://127.0.0.1:1")
    assert [row.caption for row in first.rows] != [row.caption for row in second.rows]
    assert [row.kind for row in first.rows] != [row.kind for row in second.rows]
    assert render_item(first.rows[0].spec) != render_item(second.rows[0].spec)


def test_every_kind_and_caption_treatment_present(truth):
    assert len(truth) == SMALL.samples
    assert set(row["kind"] for row in truth) == set(KINDS)
    assert set(row["caption_noise"] for row in truth) - {None} == set(CAPTION_NOISES)
    assert set(row["language"] for row in truth) == {"en", *FOREIGN_LANGUAGES}
    assert any(row["mislabelled"] for row in truth)
    treated = [row for row in truth if row["caption_noise"] or row["language"] != "en" or row["mislabelled"]]
    assert all(row["kind"] == "ok" for row in treated)


def test_concept_frequencies_are_zipf_skewed():
    world = generate_world(WorldConfig(samples=5000, seed=1), "http://127.0.0.1:1")
    shapes = Counter(row.spec.shape for row in world.rows if row.spec.shape)
    colours = Counter(row.spec.colour for row in world.rows)
    assert shapes.most_common(1)[0][0] == SHAPES[0]
    assert 8 <= shapes[SHAPES[0]] / shapes[SHAPES[-1]] <= 30
    assert 8 <= max(colours.values()) / min(colours.values()) <= 30
    assert len(shapes) == len(SHAPES)


def test_candidates_and_ground_truth_files(web, truth):
    candidates = pq.read_table(web.candidates_path)
    assert candidates.column_names == ["url", "caption"]
    assert str(candidates.schema.field("url").type) == "string"
    assert [row["row"] for row in truth] == list(range(len(truth)))
    assert candidates.column("url").to_pylist() == [row["url"] for row in truth]
    assert candidates.column("caption").to_pylist() == [row["caption"] for row in truth]

    for row in truth:
        if row["kind"] == "missing_url":
            assert row["url"] is None
        elif row["kind"] == "malformed_url":
            parts = urlsplit(row["url"])
            assert parts.scheme not in ("http", "https") or not parts.hostname or " " in row["url"]
        elif row["kind"] == "robots_disallowed":
            assert row["url"].startswith(web.base_url + ROBOTS_DISALLOWED_FOLDER)
        else:
            assert row["url"].startswith(web.base_url + "/img/")
        assert (row["duplicate_of"] is not None) == (row["kind"] in ("exact_dup", "near_dup", "dup_url", "eval_copy"))
        assert row["concepts"] and (row["shape"] is None or row["shape"] in row["concepts"])

    by_url = {}
    for row in truth:
        by_url.setdefault(row["url"], row)
    for row in rows_of(truth, "dup_url"):
        assert row["url"] == row["duplicate_of"]
        source = by_url[row["url"]]
        assert source["kind"] == "ok" and source["row"] < row["row"] and source["caption"] != row["caption"]


def test_captions_describe_their_images(truth):
    def says(caption: str, word: str) -> bool:
        return re.search(rf"\b{re.escape(word)}\b", caption.lower()) is not None

    clean = [
        row for row in truth if row["language"] == "en" and not row["caption_noise"] and not row["mislabelled"]
    ]
    for row in clean:
        caption = row["caption"]
        if row["shape"]:
            assert says(caption, row["shape"]) or says(caption, PLURALS[row["shape"]]), caption
        else:
            assert says(caption, "digit") or says(caption, "number"), caption
        colour = row["concepts"][2] if row["shape"] is None else row["concepts"][1]
        assert says(caption, colour), caption
    for row in truth:
        if row["mislabelled"]:
            shape = row["shape"]
            assert not says(row["caption"], shape) and not says(row["caption"], PLURALS[shape])
            others = [word for other in SHAPES if other != shape for word in (other, PLURALS[other])]
            assert any(says(row["caption"], word) for word in others), row["caption"]


def test_foreign_captions_pass_query_matching_but_are_not_english(truth):
    foreign = [row for row in truth if row["language"] != "en"]
    langdetect = pytest.importorskip("langdetect")
    langdetect.DetectorFactory.seed = 0
    for row in foreign:
        caption = row["caption"]
        assert len(caption.split()) >= 6
        assert any(re.search(rf"\b{word}\b", caption.lower()) for word in INTERNATIONAL_WORDS), caption
        assert langdetect.detect(caption) == row["language"], caption


def test_caption_noise(truth, web):
    queries = web.queries_path.read_text().split()
    by_noise: dict[str, list[str]] = {}
    for row in truth:
        if row["caption_noise"]:
            by_noise.setdefault(row["caption_noise"], []).append(row["caption"])
    for caption in by_noise["filename"]:
        assert re.fullmatch(r"[\w\-.]+\.(jpe?g|JPE?G)", caption)
        assert not any(query in caption.lower() for query in queries), caption
    assert all(caption == "" for caption in by_noise["empty"])
    assert all(1500 <= len(caption) <= 4000 for caption in by_noise["long"])
    assert all(re.search(r"&(#\d+|[a-z]+);", caption) for caption in by_noise["entities"])
    assert all("Ã" in caption or "â€" in caption or "Â" in caption for caption in by_noise["mojibake"])
    assert all(re.search(r"[\n\t]|  ", caption) for caption in by_noise["whitespace"])
    assert all(re.search(r"buy|price|sale|cheap|deals", caption, re.I) for caption in by_noise["spam"])
    # Long captions are padded with boilerplate that names no concept.
    for sentence in _BOILERPLATE:
        assert not set(re.findall(r"[a-z]+", sentence.lower())) & set(queries), sentence


def test_queries_file(web):
    lines = web.queries_path.read_text().splitlines()
    assert 60 <= len(lines) <= 150
    assert lines == query_words()
    assert all(line == line.lower() and line.strip() == line and line for line in lines)
    assert set(SHAPES) | set(PLURALS.values()) | set(INTERNATIONAL_WORDS) <= set(lines)


def test_eval_set_layout_and_disjoint_seeds(web):
    class_dirs = sorted(path for path in web.eval_dir.iterdir())
    assert [path.name for path in class_dirs] == sorted(SHAPES)
    for class_dir in class_dirs:
        names = sorted(path.name for path in class_dir.iterdir())
        assert names == [f"{index:04d}.jpg" for index in range(SMALL.eval_images_per_class)]
        for name in names:
            image = decode((class_dir / name).read_bytes())
            assert image.format == "JPEG" and image.size == (224, 224)

    eval_seeds = {spec.seed for specs in eval_specs(SMALL).values() for spec in specs}
    corpus_seeds = {row.spec.seed for row in web.world.rows if row.kind != "eval_copy"}
    planted_seeds = {row.spec.seed for row in web.world.rows if row.kind == "eval_copy"}
    assert all(seed % 2 == 1 for seed in eval_seeds)
    assert all(seed % 2 == 0 for seed in corpus_seeds)
    # The planted copies are the one deliberate overlap: evaluation scenes, edited.
    assert planted_seeds and planted_seeds <= eval_seeds


def test_world_json_and_describe(web):
    summary = json.loads(web.world_json_path.read_text())
    assert summary["base_url"] == web.base_url
    assert summary["config"]["samples"] == SMALL.samples
    assert sum(summary["counts"]["kind"].values()) == SMALL.samples
    assert set(summary["counts"]["shape"]) == set(SHAPES) | {"digit"}
    text = describe(web)
    assert web.base_url in text and "throttled" in text and str(web.candidates_path) in text


# --------------------------------------------------------------------------
# Rendering


def test_render_item_is_pure_and_validates():
    spec = ItemSpec(
        seed=42, shape="star", digit=None, colour="red", background="dotted", tone="paper", width=320, height=240
    )
    assert render_item(spec) == render_item(spec)
    assert decode(render_item(spec)).size == (320, 240)
    digit = replace(spec, shape=None, digit=7, style="sticker", image_format="png")
    assert decode(render_item(digit)).format == "PNG"
    with pytest.raises(ValueError):
        replace(spec, digit=3)  # both a shape and a digit
    with pytest.raises(ValueError):
        replace(spec, colour="mauve")


def test_bomb_png_is_small_with_valid_chunks():
    body = bomb_png(seed=3)
    assert body.startswith(b"\x89PNG\r\n\x1a\n") and len(body) < 16_000
    offset = 8
    chunks = []
    while offset < len(body):
        (length,) = struct.unpack(">I", body[offset : offset + 4])
        kind = body[offset + 4 : offset + 8]
        payload = body[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", body[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF
        chunks.append((kind, payload))
        offset += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">II", chunks[0][1][:8]) == (20000, 20000)


# --------------------------------------------------------------------------
# Server behaviour


def test_ok_images(web, truth):
    content_types = Counter()
    for row in rows_of(truth, "ok")[:40]:
        response = fetch(row["url"])
        assert response.status == 200
        content_types[response.headers["content-type"]] += 1
        image = decode(response.body)
        assert image.format == ("PNG" if response.headers["content-type"] == "image/png" else "JPEG")
        assert 300 <= min(image.size) and max(image.size) <= 900
        assert max(image.size) / min(image.size) <= 2.5 + 1e-6
    assert content_types["image/jpeg"] > content_types["image/png"]


def test_status_kinds_and_unknown_paths(web, truth):
    assert fetch(url_of(truth, "http_404")).status == 404
    assert fetch(url_of(truth, "http_500")).status == 500
    assert fetch(url_of(truth, "http_500")).status == 500
    assert fetch(web.base_url + "/nothing/here.jpg").status == 404
    assert fetch(web.base_url + "/").status == 404


def test_throttled_alternates_429_and_200(truth):
    url = url_of(truth, "throttled")
    first = fetch(url)
    assert first.status == 429 and first.headers["retry-after"] == "1"
    second = fetch(url)
    assert second.status == 200
    decode(second.body)
    assert fetch(url).status == 429


def test_redirect_lands_on_an_image_on_the_same_server(web, truth):
    url = url_of(truth, "redirect")
    first = fetch(url)
    assert first.status == 302 and first.headers["location"].startswith(web.base_url + "/")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.geturl().startswith(web.base_url)
        decode(response.read())


def test_redirect_loop_never_ends(web, truth):
    url = url_of(truth, "redirect_loop")
    visited = []
    for _ in range(10):
        response = fetch(url)
        assert response.status == 302
        url = response.headers["location"]
        assert url.startswith(web.base_url + "/")
        visited.append(url)
    assert len(set(visited)) <= 2


def test_broken_bodies(truth):
    not_image = fetch(url_of(truth, "not_image"))
    assert not_image.status == 200 and not_image.headers["content-type"] == "image/jpeg"
    with pytest.raises(UnidentifiedImageError):
        decode(not_image.body)

    truncated = fetch(url_of(truth, "truncated"))
    assert truncated.status == 200 and int(truncated.headers["content-length"]) == len(truncated.body)
    assert truncated.body.startswith(b"\xff\xd8")
    with pytest.raises(OSError):
        decode(truncated.body)

    tiny = fetch(url_of(truth, "tiny"))
    assert decode(tiny.body).size in ((8, 8), (16, 16))


def test_bomb_is_served_small(truth):
    response = fetch(url_of(truth, "bomb"))
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    assert len(response.body) < 16_000
    assert response.body[12:16] == b"IHDR"
    assert struct.unpack(">II", response.body[16:24]) == (20000, 20000)


def test_robots_headers(truth):
    assert fetch(url_of(truth, "noai")).headers["x-robots-tag"] == "noai"
    assert fetch(url_of(truth, "noai_bot")).headers["x-robots-tag"] == f"{SMALL.user_agent_token}: noimageai"
    other = fetch(url_of(truth, "other_bot_noai"))
    assert other.headers["x-robots-tag"] == "otherbot: noai"
    decode(other.body)
    assert "x-robots-tag" not in fetch(url_of(truth, "ok")).headers


def test_robots_txt_disallows_the_private_folder_it_still_serves(web, truth):
    from protego import Protego

    response = fetch(web.base_url + "/robots.txt")
    assert response.status == 200 and response.headers["content-type"] == "text/plain"
    rules = Protego.parse(response.body.decode())
    private = url_of(truth, "robots_disallowed")
    assert not rules.can_fetch(private, SMALL.user_agent_token)
    assert rules.can_fetch(url_of(truth, "ok"), SMALL.user_agent_token)
    assert not rules.can_fetch(url_of(truth, "ok") + "?nocrawl", SMALL.user_agent_token)
    assert not rules.can_fetch(url_of(truth, "ok"), "otherbot")
    decode(fetch(private).body)  # a crawler that ignores robots.txt gets the image


def test_many_hosts_serve_every_route_and_share_the_rows(tmp_path):
    config = replace(SMALL, samples=120, hosts=3)
    with MiniWeb(config, tmp_path) as web:
        hosts = {urlsplit(base).hostname for base in web.world.base_urls}
        assert hosts == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
        rows = [row for row in web.world.rows if row.kind == "ok"]
        used = Counter(urlsplit(row.url).hostname for row in web.world.rows
                       if row.url and row.kind not in ("malformed_url", "dup_url"))
        assert set(used) == hosts and max(used.values()) - min(used.values()) <= 5
        path = urlsplit(rows[0].url).path
        bodies = {fetch(base + path).body for base in web.world.base_urls}
        assert len(bodies) == 1
        redirect = next(row for row in web.world.rows if row.kind == "redirect")
        location = fetch(redirect.url).headers["location"]
        assert urlsplit(location).netloc == urlsplit(redirect.url).netloc
        assert "and 2 more hosts" in describe(web)


def test_duplicates(truth):
    for row in rows_of(truth, "exact_dup")[:5]:
        assert row["url"] != row["duplicate_of"]
        assert fetch(row["url"]).body == fetch(row["duplicate_of"]).body
    for row in rows_of(truth, "near_dup")[:5]:
        copy, source = fetch(row["url"]).body, fetch(row["duplicate_of"]).body
        assert copy != source
        copy_size, source_size = decode(copy).size, decode(source).size
        assert 0.55 <= copy_size[0] / source_size[0] <= 1.0
        assert 0.55 <= copy_size[1] / source_size[1] <= 1.0


def test_reset_closes_without_a_response(truth):
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
        fetch(url_of(truth, "reset"))


def test_trickle_sends_headers_then_drips_the_body(truth):
    parts = urlsplit(url_of(truth, "trickle"))
    with socket.create_connection((parts.hostname, parts.port), timeout=1) as connection:
        connection.sendall(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        received = b""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert 0 < len(body) < length  # some bytes came, but the whole body takes > 1 s


def test_slow_headers_time_out_and_do_not_block_shutdown(tmp_path):
    config = replace(SMALL, eval_images_per_class=1)
    # Handlers left from earlier tests (a trickle noticing its client left)
    # end within a few poll intervals.
    assert wait_until(lambda: request_threads() == 0, 2.0)
    baseline = 0
    with MiniWeb(config, tmp_path) as running:
        truth = pq.read_table(running.ground_truth_path).to_pylist()
        url = url_of(truth, "slow_headers")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            fetch(url, timeout=1.0)
        assert time.monotonic() - started < 2.0
        # The handler notices the client left instead of sleeping on.
        assert wait_until(lambda: request_threads() <= baseline, 1.5)

        # A client still waiting must not hold up shutdown.
        parts = urlsplit(url)
        waiting = socket.create_connection((parts.hostname, parts.port), timeout=5)
        waiting.sendall(f"GET {parts.path} HTTP/1.0\r\n\r\n".encode())
        assert wait_until(lambda: request_threads() > baseline, 1.0)
        exit_started = time.monotonic()
    try:
        assert time.monotonic() - exit_started < 1.0
        assert wait_until(lambda: request_threads() <= baseline, 1.0)
    finally:
        waiting.close()


def test_concurrent_clients_and_rate(tmp_path, capsys):
    config = WorldConfig(samples=1000, seed=11, eval_images_per_class=1)
    with MiniWeb(config, tmp_path) as running:
        truth = pq.read_table(running.ground_truth_path).to_pylist()
        urls = [row["url"] for row in rows_of(truth, "ok")][:480]

        def size_of(url: str) -> int:
            with urllib.request.urlopen(url, timeout=20) as response:
                assert response.status == 200
                return len(response.read())

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=32) as pool:
            sizes = list(pool.map(size_of, urls))
        elapsed = time.perf_counter() - started
    assert all(size > 1000 for size in sizes)
    with capsys.disabled():
        print(
            f"\nminiweb: {len(urls)} distinct ok images, 32 client threads in-process: "
            f"{len(urls) / elapsed:.0f} requests/s, {sum(sizes) / len(sizes) / 1024:.0f} KiB mean"
        )
