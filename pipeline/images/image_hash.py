"""Perceptual hashes of images, and the Hamming arithmetic that near-duplicate search needs.

One hash path. `ImageHasher.of_pixels` hashes pixels already in memory: the download stage
passes the picture it decoded for the resize, whole, before any border or crop. The same
function serves `ImageHasher.of_bytes`, which decodes a file (an evaluation image, a shard
member). A corpus image and an evaluation image are therefore compared on equal terms.

A picture has `views` hashes: the whole picture first, then centre crops `CROP_STEP` apart
(a side). A crop of a picture moves its hash about as far as an unrelated picture sits; the
copy's whole hash lies close to the original's view of about the same crop instead
(benchmarks/RESULTS.md: "The threshold behind --near-duplicate-distance").

A hash of `size` x `size` bits is kept as imagehash writes it, as hex, and handled as a row of
64-bit words (`to_words`) so that distances over many hashes are vectorised numpy.

A pHash reads luminance, and only its pattern: a red disc and a black one on the same paper
hash alike. `ImageHasher.colours` adds each view's colour: the mean CIELAB of a
`COLOUR_GRID` x `COLOUR_GRID` grid of cells (OpenCV's 8-bit scale: L*, a*, b* each 0-255),
as hex of the cell values. Two views are compared in levels of a step (`colour_levels`): they
agree when no cell value differs by more than one level (`colours_close`).

`bands` splits the bits into `distance + 1` bands. Two hashes within `distance` bits differ
in at most `distance` bands, so by pigeonhole they agree exactly on at least one band.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
import warnings

import numpy as np

# What Pillow raises on hostile bytes varies by format plugin (SyntaxError for a broken PNG
# chunk, struct.error or EOFError for short headers...); each means "not an image".
DECODER_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                  ArithmeticError, struct.error)

HASH_KINDS = ("phash", "dhash", "ahash", "whash")
CROP_STEP = 0.005  # the crop of one view more than the one before, a side
MAX_VIEWS = 21  # crops up to 10 % a side
# imagehash's highfreq_factor: its pHash takes the DCT of a grey square 4x the hash size.
DCT_SCALE = 4
# The grey square the views are cut from is at least this many pixels a side, so that a crop
# step is about a pixel of it, and 4x the DCT input so the cut views are properly low-passed.
BASE_SIDE = 256
WORD_BITS = 64
COLOUR_GRID = 3  # cells a side: an object in a corner still colours its own cell
COLOUR_SIDE = 128  # the colour square the views' cells are summed from
COLOUR_VALUES = COLOUR_GRID * COLOUR_GRID * 3


@dataclasses.dataclass(frozen=True)
class ImageHasher:
    """imagehash's `kind` (phash, dhash, ahash, whash) of `size` x `size` bits, of the whole
    picture and of `views - 1` centre crops."""

    kind: str = "phash"
    size: int = 8
    views: int = 1

    @property
    def bits(self) -> int:
        return self.size * self.size

    @property
    def hex_length(self) -> int:
        return -(-self.bits // 4)

    @property
    def dct_side(self) -> int:
        return DCT_SCALE * self.size

    @property
    def base_side(self) -> int:
        """The side of the grey square the views are cut from."""
        return max(BASE_SIDE, 4 * self.dct_side)

    @property
    def crops(self) -> tuple[float, ...]:
        """The crop of each view, a side, as a fraction of the picture's width and height."""
        return tuple(round(view * CROP_STEP, 4) for view in range(self.views))

    def validate(self) -> str | None:
        """What is wrong with this hasher, or None."""
        if self.kind not in HASH_KINDS:
            return f"unknown hash kind {self.kind!r} (one of {', '.join(HASH_KINDS)})"
        if not 4 <= self.size <= 32 or (self.kind == "whash" and self.size & (self.size - 1)):
            return "the hash size must be in [4, 32] (a power of two for whash)"
        if not 1 <= self.views <= MAX_VIEWS:
            return f"the number of hash views must be in [1, {MAX_VIEWS}]"
        return None

    def of_pixels(self, pixels) -> tuple[str, ...]:
        """The hashes of a BGR, RGB-as-BGR or grey uint8 array: the whole picture first, then
        its centre crops."""
        import cv2

        grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        dct_side, side = self.dct_side, self.base_side
        height, width = grey.shape[:2]
        interpolation = cv2.INTER_AREA if height >= side and width >= side else cv2.INTER_LINEAR
        # A centre crop commutes with the squashing resize: every view is cut from one square,
        # low-passed once for the ~4x reduction, then sampled at sub-pixel crop positions.
        base = cv2.resize(grey, (side, side), interpolation=interpolation)
        smooth = cv2.blur(base, (side // dct_side, side // dct_side))
        thumbnails = np.empty((self.views, dct_side, dct_side), dtype=np.uint8)
        for view, crop in enumerate(self.crops):
            scale = side * (1 - 2 * crop) / dct_side
            # destination pixel centre x + 0.5 samples source position crop*side + (x+0.5)*scale
            offset = side * crop + 0.5 * scale - 0.5
            to_source = np.array([[scale, 0, offset], [0, scale, offset]])
            cv2.warpAffine(smooth, to_source, (dct_side, dct_side), dst=thumbnails[view],
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
        if self.kind == "phash":
            return self._phashes(thumbnails)
        return tuple(self._imagehash(thumbnail) for thumbnail in thumbnails)

    def colours(self, pixels) -> tuple[str, ...]:
        """The colour of each view of a BGR or grey uint8 array (the views of `of_pixels`): for
        each, the mean L*, a*, b* of each grid cell, rounded, as hex (row by row, L*a*b* each)."""
        import cv2

        bgr = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels
        side = COLOUR_SIDE
        height, width = bgr.shape[:2]
        interpolation = cv2.INTER_AREA if height >= side and width >= side else cv2.INTER_LINEAR
        lab = cv2.cvtColor(cv2.resize(bgr, (side, side), interpolation=interpolation),
                           cv2.COLOR_BGR2LAB)
        # The integral image of a picture made of constant pixels is bilinear between pixel
        # corners, so interpolating it gives exact sums over cells with sub-pixel edges.
        total = cv2.integral(lab, sdepth=cv2.CV_64F)
        crops = np.asarray(self.crops)[:, None]
        lines = side * (crops + (1 - 2 * crops) * np.arange(COLOUR_GRID + 1) / COLOUR_GRID)
        low = np.minimum(np.floor(lines).astype(np.int64), side - 1)
        fraction = lines - low
        sums = 0.0
        for dy, weight_y in ((0, 1 - fraction), (1, fraction)):
            for dx, weight_x in ((0, 1 - fraction), (1, fraction)):
                sums = sums + (weight_y[:, :, None, None] * weight_x[:, None, :, None]
                               * total[(low + dy)[:, :, None], (low + dx)[:, None, :]])
        cells = sums[:, 1:, 1:] - sums[:, :-1, 1:] - sums[:, 1:, :-1] + sums[:, :-1, :-1]
        area = ((lines[:, 1] - lines[:, 0]) ** 2)[:, None, None, None]
        means = np.clip(np.rint(np.round(cells / area, 6)), 0, 255).astype(np.uint8)
        return tuple(view.tobytes().hex() for view in means)

    def of_bytes(self, data: bytes) -> tuple[str, ...]:
        """The hashes of an encoded image (any format Pillow reads): its first frame, upright,
        alpha on white, decoded at reduced size where the format allows. Raises what Pillow
        raises on bytes that are not an image."""
        from PIL import Image, ImageOps

        side = self.base_side
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (side, side))  # JPEG only: a scaled decode
                image.seek(0)
                image = ImageOps.exif_transpose(image)
                if image.mode in ("RGBA", "LA", "PA", "P") and (
                        image.mode != "P" or "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    flat = Image.new("RGB", rgba.size, (255, 255, 255))
                    flat.paste(rgba, mask=rgba.getchannel("A"))
                    image = flat
                rgb = np.asarray(image.convert("RGB"))
        return self.of_pixels(np.ascontiguousarray(rgb[:, :, ::-1]))

    def _phashes(self, thumbnails: np.ndarray) -> tuple[str, ...]:
        """imagehash's pHash of each grey thumbnail: the DCT-II (scipy.fftpack's, unscaled) of
        its rows and columns, the low `size` x `size` coefficients against their median. Only
        the low coefficients are computed, as one product for all views; they are rounded first
        so that a flat picture's ties fall the same way on every machine."""
        dct = _dct_rows(self.size, thumbnails.shape[1])
        low = dct @ thumbnails.astype(np.float64) @ dct.T
        low = np.round(low.reshape(len(thumbnails), -1), 6)
        above = low > np.median(low, axis=1, keepdims=True)
        return tuple(self._hex(row) for row in above)

    def _imagehash(self, thumbnail) -> str:
        import imagehash
        from PIL import Image

        image = Image.fromarray(thumbnail)
        if self.kind == "dhash":
            return str(imagehash.dhash(image, hash_size=self.size))
        if self.kind == "ahash":
            return str(imagehash.average_hash(image, hash_size=self.size))
        return str(imagehash.whash(image, hash_size=self.size))

    def _hex(self, bits) -> str:
        """Bits, the first the highest, as imagehash writes them: hex, zero-padded."""
        padding = -self.bits % 8
        value = int.from_bytes(np.packbits(bits).tobytes(), "big") >> padding
        return format(value, f"0{self.hex_length}x")


@functools.lru_cache(maxsize=8)
def _dct_rows(rows: int, length: int) -> np.ndarray:
    """The first `rows` rows of scipy.fftpack's unnormalised DCT-II matrix of `length`."""
    k = np.arange(rows)[:, None]
    n = np.arange(length)[None, :]
    return 2 * np.cos(np.pi * k * (2 * n + 1) / (2 * length))


def is_hash(text, hex_length: int) -> bool:
    if not isinstance(text, str) or len(text) != hex_length:
        return False
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def is_colour(text) -> bool:
    return is_hash(text, 2 * COLOUR_VALUES)


def colour_levels(codes, step: int) -> np.ndarray:
    """Colour codes (hex, `ImageHasher.colours`) -> an (n, COLOUR_VALUES) int16 array of levels
    of `step`."""
    values = np.frombuffer(bytes.fromhex("".join(codes)), dtype=np.uint8)
    return (values.reshape(len(codes), COLOUR_VALUES) // step).astype(np.int16)


UNKNOWN_COLOUR = -1  # a row of levels that agrees with every colour (a sample without one)


def colours_close(levels: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Row by row (broadcasting): whether no cell value of the two differs by more than one
    level, or either is unknown."""
    unknown = (levels[..., 0] == UNKNOWN_COLOUR) | (others[..., 0] == UNKNOWN_COLOUR)
    return unknown | (np.abs(levels - others).max(axis=-1) <= 1)


def to_words(hashes, bits: int) -> np.ndarray:
    """Hex hashes -> an (n, words) uint64 array, the first word holding the top bits."""
    words = -(-bits // WORD_BITS)
    out = np.zeros((len(hashes), words), dtype=np.uint64)
    mask = (1 << WORD_BITS) - 1
    for row, text in enumerate(hashes):
        value = int(text, 16)
        for word in range(words - 1, -1, -1):
            out[row, word] = value & mask
            value >>= WORD_BITS
    return out


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def distances(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The (len(rows), len(others)) matrix of Hamming distances between two word arrays."""
    total = np.zeros((len(rows), len(others)), dtype=np.uint16)
    for word in range(rows.shape[1]):
        total += np.bitwise_count(rows[:, word, None] ^ others[None, :, word])
    return total


def band_edges(bits: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous bit ranges [start, end) covering `bits`, as equal as can be."""
    return [(bits * i // parts, bits * (i + 1) // parts) for i in range(parts)]


def bands(hash_hex: str, bits: int, distance: int) -> list[tuple[int, int]]:
    """(band index, band value) for each of the `distance + 1` bands of a hash."""
    value = int(hash_hex, 16)
    return [(index, (value >> (bits - end)) & ((1 << (end - start)) - 1))
            for index, (start, end) in enumerate(band_edges(bits, distance + 1))]
