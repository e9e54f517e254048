"""A JPEG decoded at reduced size and resized the rest of the way, as img2dataset would size it.

img2dataset's `Resizer` decodes every image at full size and then throws most of the pixels
away. libjpeg-turbo can do the first part of the reduction inside the decoder: its scaled
inverse DCT produces the image at M/8 of its size (M = 1..16) for much less work than a full
decode, and the result is a proper low-pass image, not a decimation. `decode_reduced` decodes at
the smallest such scale whose size is still at least twice the target size (simplejpeg, a
libjpeg-turbo binding), then resizes with OpenCV's area filter to exactly the size the
`Resizer` would produce from the full image (its albumentations arithmetic:
`round(side * target / longest)`, white borders split as `int(pad / 2)` before, the rest
after; a centre crop at `(side - target) // 2`).

Only the case where this pays and is exact is handled here: a plain (8-bit RGB or grey,
upright, one frame) JPEG that is downscaled. `plan_jpeg` says whether an image is that case;
everything else (PNG, WebP, GIF, upscaling, resize mode `no`) goes through the `Resizer`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

WHITE = 255
# The decoded image is at least twice the output size, and the area filter does the last
# factor of two or more: decoding straight to the output size leaves the final resize a
# near-1:1 interpolation, visibly softer (benchmarks/RESULTS.md has the PSNR of both).
DECODE_MARGIN = 2


@dataclasses.dataclass(frozen=True)
class ResizePlan:
    """The output size before borders or cropping, and whether the JPEG is grey."""

    width: int
    height: int
    grey: bool


def _scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def plan_jpeg(width: int, height: int, grey: bool, image_size: int,
              resize_mode: str) -> ResizePlan | None:
    """The plan for a plain JPEG of this size, or None when it is not a downscale (the
    `Resizer` takes those: upscaling uses another filter and `no` keeps the bytes' size)."""
    if resize_mode in ("border", "keep_ratio_largest"):
        reference = max(width, height)
    elif resize_mode in ("keep_ratio", "center_crop"):
        reference = min(width, height)
    else:
        return None
    if reference <= image_size:
        return None
    new_width, new_height = _scaled(width, height, image_size / reference)
    return ResizePlan(new_width, new_height, grey)


def decode_reduced(data: bytes, plan: ResizePlan):
    """Decoded at the smallest of libjpeg-turbo's M/8 scales that is at least DECODE_MARGIN
    times the plan's size (or at full size, when none is that small)."""
    import simplejpeg

    decoded = simplejpeg.decode_jpeg(
        data, colorspace="GRAY" if plan.grey else "BGR",
        min_height=DECODE_MARGIN * plan.height, min_width=DECODE_MARGIN * plan.width,
        strict=False)  # what OpenCV decodes with a warning (stray bytes before a marker) too
    return decoded[:, :, 0] if decoded.ndim == 3 and decoded.shape[2] == 1 else decoded


def fit(decoded, plan: ResizePlan, resize_mode: str, image_size: int):
    """Area-resized to the plan's size, then bordered or cropped as the resize mode says."""
    import cv2

    height, width = decoded.shape[:2]
    if height >= 2 * plan.height and width >= 2 * plan.width:
        # OpenCV's area filter is several times faster at exactly 2:1 than at a fractional
        # ratio; the step to twice the size is a small, near-1:1 one.
        if (height, width) != (2 * plan.height, 2 * plan.width):
            decoded = cv2.resize(decoded, (2 * plan.width, 2 * plan.height),
                                 interpolation=cv2.INTER_LINEAR)
        decoded = cv2.resize(decoded, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
    elif (height, width) != (plan.height, plan.width):
        decoded = cv2.resize(decoded, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
    if resize_mode == "border":
        return add_white_border(decoded, image_size)
    if resize_mode == "center_crop":
        return centre_crop(decoded, image_size)
    return decoded


def add_white_border(pixels, side: int):
    """Padded with white to at least side x side, centred as albumentations' PadIfNeeded."""
    import cv2

    height, width = pixels.shape[:2]
    pad_h, pad_w = max(0, side - height), max(0, side - width)
    if not pad_h and not pad_w:
        return pixels
    top, left = int(pad_h / 2.0), int(pad_w / 2.0)
    return cv2.copyMakeBorder(pixels, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                              value=(WHITE, WHITE, WHITE))


def border_content(pixels, original_width: int, original_height: int, side: int,
                   resize_only_if_bigger: bool):
    """The picture inside `add_white_border`'s padding of a `border`-mode output."""
    if resize_only_if_bigger and max(original_width, original_height) <= side:
        width, height = original_width, original_height
    else:
        width, height = _scaled(original_width, original_height,
                                side / max(original_width, original_height))
    out_height, out_width = pixels.shape[:2]
    width, height = min(width, out_width), min(height, out_height)
    top, left = int((out_height - height) / 2.0), int((out_width - width) / 2.0)
    return pixels[top:top + height, left:left + width]


def centre_crop(pixels, side: int):
    height, width = pixels.shape[:2]
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(pixels[top:top + side, left:left + side])


def encode_jpeg(pixels, quality: int) -> bytes:
    """JPEG bytes as the `Resizer` writes them (OpenCV's encoder, its default 4:2:0)."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", pixels, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError("the JPEG encoder refused the pixels")
    return encoded.tobytes()
