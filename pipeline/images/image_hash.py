"""Perceptual hashes of images, and the Hamming arithmetic that near-duplicate search needs.

One hash path. `ImageHasher.of_pixels` hashes pixels already in memory: the download stage
passes the picture it decoded for the resize, whole, before any border or crop. The same
function serves `ImageHasher.of_bytes`, which decodes a file (an evaluation image, a shard
member). A corpus image and an evaluation image are therefore compared on equal terms.

A hash of `size` x `size` bits is kept as imagehash writes it, as hex, and handled as a row of
64-bit words (`to_words`) so that distances over many hashes are vectorised numpy.

`bands` splits the bits into `distance + 1` bands. Two hashes within `distance` bits differ
in at most `distance` bands, so by pigeonhole they agree exactly on at least one band.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings

import numpy as np

# What Pillow raises on hostile bytes varies by format plugin (SyntaxError for a broken PNG
# chunk, struct.error or EOFError for short headers...); each means "not an image".
DECODER_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                  ArithmeticError, struct.error)

HASH_KINDS = ("phash", "dhash", "ahash", "whash")
# The grey thumbnail every hash is taken from, in multiples of the hash size (pHash reads a
# 4x thumbnail; twice that keeps its own resize a proper low-pass).
THUMBNAIL_SCALE = 8
WORD_BITS = 64


@dataclasses.dataclass(frozen=True)
class ImageHasher:
    """imagehash's `kind` (phash, dhash, ahash, whash) of `size` x `size` bits."""

    kind: str = "phash"
    size: int = 8

    @property
    def bits(self) -> int:
        return self.size * self.size

    @property
    def hex_length(self) -> int:
        return -(-self.bits // 4)

    def validate(self) -> str | None:
        """What is wrong with this hasher, or None."""
        if self.kind not in HASH_KINDS:
            return f"unknown hash kind {self.kind!r} (one of {', '.join(HASH_KINDS)})"
        if not 4 <= self.size <= 32 or (self.kind == "whash" and self.size & (self.size - 1)):
            return "the hash size must be in [4, 32] (a power of two for whash)"
        return None

    def of_pixels(self, pixels) -> str:
        """The hash of a BGR, RGB-as-BGR or grey uint8 array (the whole picture)."""
        import cv2

        grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        side = THUMBNAIL_SCALE * self.size
        height, width = grey.shape[:2]
        interpolation = cv2.INTER_AREA if height >= side and width >= side else cv2.INTER_LINEAR
        thumbnail = cv2.resize(grey, (side, side), interpolation=interpolation)
        return self._hash_thumbnail(thumbnail)

    def of_bytes(self, data: bytes) -> str:
        """The hash of an encoded image (any format Pillow reads): its first frame, upright,
        alpha on white, decoded at reduced size where the format allows. Raises what Pillow
        raises on bytes that are not an image."""
        from PIL import Image, ImageOps

        side = THUMBNAIL_SCALE * self.size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (2 * side, 2 * side))  # JPEG only: a scaled decode
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

    def _hash_thumbnail(self, thumbnail) -> str:
        import imagehash
        from PIL import Image

        image = Image.fromarray(thumbnail)
        if self.kind == "phash":
            return str(imagehash.phash(image, hash_size=self.size))
        if self.kind == "dhash":
            return str(imagehash.dhash(image, hash_size=self.size))
        if self.kind == "ahash":
            return str(imagehash.average_hash(image, hash_size=self.size))
        return str(imagehash.whash(image, hash_size=self.size))


def is_hash(text, hex_length: int) -> bool:
    if not isinstance(text, str) or len(text) != hex_length:
        return False
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


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
