"""Image checks and the download stage (img2dataset's Resizer inside a Beam DoFn)."""

import hashlib
import io

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from helpers import Route, beam_test_pipeline, bomb_png, jpeg_bytes, png_bytes
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.images.image_hash import is_colour
from openwit.pipeline.images.download import DownloadImages, ImageProcessor, is_complete, load_img2dataset
from openwit.pipeline.core.records import Reason, Stage, sample_key


@pytest.fixture(scope="module")
def process():
    _, resizer = load_img2dataset()
    return ImageProcessor(DownloadConfig(image_size=64, min_image_size=32, max_aspect_ratio=5.0),
                          resizer)


def test_valid_jpeg_is_resized_and_hashed(process):
    data = jpeg_bytes(size=(320, 240))
    fields, problem = process(data)
    assert problem is None
    assert (fields["width"], fields["height"]) == (64, 64)  # border mode pads to a square
    assert (fields["original_width"], fields["original_height"]) == (320, 240)
    assert fields["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(fields["phash"]) == DownloadConfig().hasher.hex_length
    assert len(fields["phash_crops"]) == DownloadConfig().hash_views - 1
    assert all(len(value) == DownloadConfig().hasher.hex_length for value in fields["phash_crops"])
    assert len(fields["colours"]) == DownloadConfig().hash_views
    assert all(is_colour(value) for value in fields["colours"])
    with Image.open(io.BytesIO(fields["jpg"])) as image:
        assert image.format == "JPEG" and image.size == (64, 64)


def test_png_with_alpha_becomes_jpeg(process):
    fields, problem = process(png_bytes())
    assert problem is None
    assert Image.open(io.BytesIO(fields["jpg"])).mode == "RGB"


@pytest.mark.parametrize("data, reason", [
    (b"<html><body>not an image</body></html>", Reason.NOT_AN_IMAGE),
    (b"", Reason.NOT_AN_IMAGE),
    (jpeg_bytes(size=(400, 400))[:-700], Reason.TRUNCATED_IMAGE),
    (png_bytes()[:-40], Reason.TRUNCATED_IMAGE),
    (bomb_png(), Reason.IMAGE_TOO_LARGE),
    (bomb_png(12000, 9000), Reason.IMAGE_TOO_LARGE),  # over the area limit, under Pillow's
    (jpeg_bytes(size=(16, 16)), Reason.IMAGE_TOO_SMALL),
    (jpeg_bytes(size=(1000, 100)), Reason.ASPECT_RATIO),
])
def test_bad_images_become_reasons(process, data, reason):
    fields, problem = process(data)
    assert fields is None
    assert problem[0] == reason


def test_end_markers():
    data = jpeg_bytes()
    assert is_complete("JPEG", data)
    assert is_complete("JPEG", data + b"\x00" * 100)  # padding after the end marker
    assert not is_complete("JPEG", data[: len(data) // 2])
    assert not is_complete("PNG", png_bytes()[:-12])
    assert is_complete("GIF", b"anything")


def test_download_stage_keeps_shards_and_reports_every_failure(site):
    images = {f"/{i}.jpg": jpeg_bytes(color=(i * 20, 80, 160), size=(200 + i, 150)) for i in
              range(12)}
    for path, body in images.items():
        site.routes[path] = Route(body=body, headers={"Content-Type": "image/jpeg"})
    site.routes["/html.jpg"] = Route(body=b"<html></html>", headers={"Content-Type": "image/jpeg"})
    site.routes["/optout.jpg"] = Route(body=jpeg_bytes(), headers={"X-Robots-Tag": "noai"})
    candidates = [(i % 3, {"key": sample_key(site.url(p), "c"), "url": site.url(p),
                           "caption": "c", "queries": []})
                  for i, p in enumerate([*images, "/html.jpg", "/optout.jpg", "/missing.jpg"])]
    config = DownloadConfig(threads=3, allow_private_hosts=True, timeout=5, image_size=64)
    with beam_test_pipeline() as p:
        result = p | beam.Create(candidates) | DownloadImages(config)
        assert_that(
            result.kept | beam.MapTuple(lambda shard, s: (shard, s["url"], s["width"])),
            equal_to([(i % 3, site.url(path), 64) for i, path in enumerate(images)]),
            label="kept")
        assert_that(
            result.failed | beam.MapTuple(lambda shard, f: (shard, f["stage"], f["reason"])),
            equal_to([(12 % 3, Stage.DOWNLOAD, Reason.NOT_AN_IMAGE),
                      (13 % 3, Stage.DOWNLOAD, Reason.OPTED_OUT),
                      (14 % 3, Stage.DOWNLOAD, Reason.HTTP_NOT_FOUND)]),
            label="failed")


def test_failure_details_are_the_same_on_every_run(process):
    # Pillow names the stream object by address; a rerun must write the same failure record.
    first = process(b"<html><body>not an image</body></html>")[1]
    second = process(b"<html><body>not an image</body></html>")[1]
    assert first == second == (Reason.NOT_AN_IMAGE,
                               "UnidentifiedImageError: cannot identify image file")
