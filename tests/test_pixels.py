"""Correct pixels or a reason: images OpenCV alone would store wrongly are decoded with Pillow
first, and any decoder exception is a counted decode_error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from openwit.pipeline.core.records import Reason
from openwit.pipeline.images import download
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.images.download import ImageProcessor, load_img2dataset


@pytest.fixture(scope="module")
def process():
    _, resizer = load_img2dataset()
    return ImageProcessor(DownloadConfig(image_size=64, resize_mode="keep_ratio"), resizer)


def stored(process, data: bytes) -> np.ndarray:
    fields, problem = process(data)
    assert problem is None, problem
    return np.asarray(Image.open(io.BytesIO(fields["jpg"])).convert("RGB"), dtype=np.int32)


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_a_16_bit_png_keeps_its_grey(process):
    grey = Image.fromarray(np.full((80, 80), 32768, dtype=np.uint16))  # mode I;16
    assert grey.mode.startswith("I")
    pixels = stored(process, encoded(grey, "PNG"))
    assert abs(pixels.mean() - 128) < 3  # not saturated to white


def test_exif_orientation_is_applied(process):
    # Top half red, bottom half blue, stored sideways with orientation 6 (rotate 90 CW).
    image = Image.new("RGB", (100, 200), (255, 0, 0))
    image.paste((0, 0, 255), (0, 100, 100, 200))
    sideways = image.transpose(Image.Transpose.ROTATE_90)  # what a camera would store
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = stored(process, encoded(sideways, "JPEG", exif=exif.tobytes(), quality=95))
    height = pixels.shape[0]
    assert pixels.shape[0] > pixels.shape[1]  # portrait again
    assert pixels[: height // 4, :, 0].mean() > 200 and pixels[-height // 4:, :, 2].mean() > 200


def test_a_palette_png_keeps_its_colours(process):
    image = Image.new("RGB", (80, 80), (20, 200, 40)).convert("P", palette=Image.Palette.ADAPTIVE)
    pixels = stored(process, encoded(image, "PNG"))
    assert abs(pixels[..., 1].mean() - 200) < 10 and pixels[..., 0].mean() < 50


def test_alpha_is_composited_on_white(process):
    image = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 40, 80))  # left half opaque black
    pixels = stored(process, encoded(image, "PNG"))
    width = pixels.shape[1]
    assert pixels[:, : width // 4].mean() < 40 and pixels[:, -width // 4:].mean() > 215


def test_an_animated_gif_takes_its_first_frame(process):
    frames = [Image.new("RGB", (80, 80), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    pixels = stored(process, data)
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 60


def test_cmyk_becomes_rgb(process):
    image = Image.new("CMYK", (80, 80), (0, 255, 255, 0))  # red
    pixels = stored(process, encoded(image, "JPEG"))
    assert pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 60


def test_a_plain_rgb_jpeg_goes_straight_to_the_resizer(process, monkeypatch):
    calls = []
    monkeypatch.setattr(download, "plain_rgb_png", lambda data: calls.append(data) or data)
    stored(process, encoded(Image.new("RGB", (80, 80), (1, 2, 3)), "JPEG"))
    assert calls == []  # the common case is not re-encoded


def test_any_decoder_exception_is_a_decode_error(process, monkeypatch):
    def explode(data):
        raise ZeroDivisionError("a plugin bug")

    monkeypatch.setattr(download, "plain_rgb_png", explode)
    image = Image.new("RGBA", (80, 80), (1, 2, 3, 4))
    fields, problem = process(encoded(image, "PNG"))
    assert fields is None and problem == (Reason.DECODE_ERROR, "ZeroDivisionError: a plugin bug")
