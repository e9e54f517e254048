"""The reduced-size JPEG path gives what img2dataset's Resizer gives from a full decode: the
same sizes, borders and crops in every resize mode, nearly the same pixels, the same refusals;
everything it does not handle still goes through the Resizer."""

from __future__ import annotations

import concurrent.futures
import io
import os

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from openwit.pipeline.core.records import Reason
from openwit.pipeline.images import download, resize
from openwit.pipeline.images.image_hash import colour_levels, colours_close, hamming
from openwit.pipeline.images.config import RESIZE_MODES, DedupConfig, DownloadConfig
from openwit.pipeline.images.download import ImageProcessor, load_img2dataset


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90, grey=False) -> bytes:
    """Smooth shapes over 1/f-ish noise: detail at every scale, as in a photograph."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if grey:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def decoded(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def resizer_module():
    return load_img2dataset()[1]


def reference(resizer_module, config: DownloadConfig, data: bytes):
    """What img2dataset's Resizer alone makes of the bytes."""
    resizer = resizer_module.Resizer(
        image_size=config.image_size, resize_mode=config.resize_mode,
        resize_only_if_bigger=config.resize_only_if_bigger,
        encode_quality=config.encode_quality, encode_format="jpg",
        min_image_size=config.min_image_size, max_image_area=config.max_image_area,
        max_aspect_ratio=config.max_aspect_ratio)
    return resizer(io.BytesIO(data))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(33, 1300), height=st.integers(33, 1300),
       image_size=st.sampled_from([64, 100, 224, 256]),
       mode=st.sampled_from(RESIZE_MODES), grey=st.booleans())
def test_sizes_match_the_resizer_in_every_mode(resizer_module, width, height, image_size,
                                               mode, grey):
    if max(width, height) / min(width, height) > 5:
        return
    config = DownloadConfig(image_size=image_size, resize_mode=mode, min_image_size=32)
    data = photo_jpeg(width, height, grey=grey)
    fields, problem = ImageProcessor(config, resizer_module)(data)
    encoded, out_width, out_height, original_width, original_height, error = reference(
        resizer_module, config, data)
    assert error is None and problem is None
    assert (fields["width"], fields["height"]) == (out_width, out_height)
    assert (fields["original_width"], fields["original_height"]) == (width, height)
    ours, theirs = decoded(fields["jpg"]), decoded(encoded)
    assert ours.shape == theirs.shape  # grey stays grey, colour stays colour
    # Same geometry, borders on the same sides: a shifted or mis-sized image would be far off.
    assert cv2.PSNR(ours, theirs) > 28


def test_a_large_photo_is_decoded_reduced_and_stays_close(resizer_module):
    data = photo_jpeg(1600, 1200, seed=3)
    plan = resize.plan_jpeg(1600, 1200, False, 256, "border")
    assert (plan.width, plan.height) == (256, 192)
    reduced = resize.decode_reduced(data, plan)
    assert reduced.shape[1] < 1600 and reduced.shape[1] >= 2 * 256  # reduced, with margin
    pixels = resize.fit(reduced, plan, "border", 256)
    assert pixels.shape == (256, 256, 3)
    assert (pixels[:32] == 255).all() and (pixels[-32:] == 255).all()  # 64 rows of border
    expected = cv2.resize(decoded(data), (256, 192), interpolation=cv2.INTER_AREA)
    assert cv2.PSNR(pixels[32:224], expected) > 35


def test_only_downscaled_plain_jpegs_take_the_reduced_path():
    assert resize.plan_jpeg(1000, 500, False, 256, "border") is not None
    assert resize.plan_jpeg(1000, 500, False, 256, "center_crop") is not None
    assert resize.plan_jpeg(200, 100, False, 256, "border") is None  # an upscale
    assert resize.plan_jpeg(1000, 200, False, 256, "keep_ratio") is None  # short side 200
    assert resize.plan_jpeg(1000, 500, False, 256, "no") is None


@pytest.mark.parametrize("data, kind", [
    (photo_jpeg(600, 400), "reduced"),
    (photo_jpeg(120, 100), "resizer"),  # an upscale to 256
    (cv2.imencode(".png", decoded(photo_jpeg(600, 400)))[1].tobytes(), "resizer"),
    (cv2.imencode(".webp", decoded(photo_jpeg(600, 400)))[1].tobytes(), "resizer"),
])
def test_which_path_each_image_takes(resizer_module, monkeypatch, data, kind):
    calls = []
    real = resize.decode_reduced
    monkeypatch.setattr(download, "decode_reduced", lambda *a: calls.append("reduced") or real(*a))
    process = ImageProcessor(DownloadConfig(), resizer_module)
    fields, problem = process(data)
    assert problem is None
    assert calls == (["reduced"] if kind == "reduced" else [])
    assert (fields["width"], fields["height"]) == (256, 256)


@pytest.mark.parametrize("size, reason, detail", [
    ((600, 20), Reason.IMAGE_TOO_SMALL, "image too small"),
    ((1200, 200), Reason.ASPECT_RATIO, "aspect ratio too large"),
])
def test_refusals_match_the_resizer(resizer_module, size, reason, detail):
    config = DownloadConfig(min_image_size=32, max_aspect_ratio=5.0)
    data = photo_jpeg(*size)
    assert ImageProcessor(config, resizer_module)(data) == (None, (reason, detail))
    assert reference(resizer_module, config, data)[-1] == detail


def test_a_corrupt_jpeg_is_a_decode_error_or_decoded_never_a_crash(resizer_module):
    data = bytearray(photo_jpeg(800, 600))
    data[700:900] = bytes(200)  # zeroed entropy-coded data, markers intact
    fields, problem = ImageProcessor(DownloadConfig(), resizer_module)(bytes(data))
    assert (fields is None) != (problem is None)
    if problem is not None:
        assert problem[0] == Reason.DECODE_ERROR


def test_a_list_of_jpegs_never_imports_img2dataset(monkeypatch):
    loads = []
    process = ImageProcessor(DownloadConfig(), lambda: loads.append(1) or load_img2dataset()[1])
    assert process(photo_jpeg(900, 700))[1] is None
    assert loads == []
    assert process(cv2.imencode(".png", decoded(photo_jpeg(300, 200)))[1].tobytes())[1] is None
    assert loads == [1]


def test_threads_share_one_processor(resizer_module):
    """The download stage runs one ImageProcessor on all its fetch threads, PNGs (the
    Resizer, which swaps stdout/stderr) among JPEGs; results equal the one-thread ones."""
    jpegs = [photo_jpeg(500 + 37 * i, 400, seed=i) for i in range(12)]
    pngs = [cv2.imencode(".png", decoded(photo_jpeg(300, 200, seed=i)))[1].tobytes()
            for i in range(6)]
    images = jpegs + pngs
    descriptors = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
    process = ImageProcessor(DownloadConfig(), resizer_module)
    alone = [process(data) for data in images]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(process, images * 3))
    assert together == alone * 3
    # The Resizer's swaps of stdout/stderr never overlapped: both point where they did.
    assert [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)] == descriptors


@pytest.mark.parametrize("mode, encode", [  # jpeg: the reduced path; png: the Resizer's
    ("border", "jpeg"), ("center_crop", "jpeg"), ("keep_ratio", "jpeg"),
    ("border", "png"), ("keep_ratio", "png")])  # the Resizer's centre crop hides the rest
def test_the_hash_is_of_the_whole_picture_as_an_evaluation_file_is_hashed(
        resizer_module, mode, encode):
    picture = decoded(photo_jpeg(800, 600, seed=5))
    data = cv2.imencode(f".{'jpg' if encode == 'jpeg' else encode}", picture,
                        [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1].tobytes()
    fields, _ = ImageProcessor(DownloadConfig(resize_mode=mode), resizer_module)(data)
    as_a_file = DownloadConfig().hasher.of_bytes(data)
    # Border, crop or neither, the same picture: a few bits from the resampling, in the whole
    # picture's hash and in each crop's, and never as far as the near-duplicate distance.
    found = [hamming(value, from_file) for value, from_file in
             zip([fields["phash"], *fields["phash_crops"]], as_a_file, strict=True)]
    assert sorted(found)[len(found) // 2] <= 4 and max(found) <= DedupConfig().near_distance
    # The colours of the views agree with the file's as the dedup stage compares them.
    step = DedupConfig().colour_step
    assert colours_close(colour_levels(fields["colours"], step),
                         colour_levels(DownloadConfig().hasher.colours(picture), step)).all()


@pytest.mark.parametrize("mode", ["no", "keep_ratio_largest"])
def test_other_modes_still_work(resizer_module, mode):
    config = DownloadConfig(resize_mode=mode)
    data = Image.new("RGB", (640, 480), (10, 120, 200))
    buffer = io.BytesIO()
    data.save(buffer, "JPEG")
    fields, problem = ImageProcessor(config, resizer_module)(buffer.getvalue())
    assert problem is None
    expected = (640, 480) if mode == "no" else (256, 192)
    assert (fields["width"], fields["height"]) == expected
