"""Deterministic rendering of mini-web images.

Everything here is a pure function of an :class:`ItemSpec`: the same spec gives
the same bytes on every call, in every process, so the server can render lazily
on request and two worlds built from the same seed serve identical images.

Rendering has to be cheap (the server renders every image on request, while the
download stage under test fetches dozens at once), so backgrounds are built from one small numpy tile
repeated with ``np.tile`` or from low-resolution masks upscaled by PIL, and
shapes are single polygons drawn with ``ImageDraw``.
"""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Collection

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Point = tuple[float, float]

# The zero-shot classes, most frequent first (world.py gives them Zipf weights
# in this order).
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "hexagon",
    "diamond",
    "crescent",
    "arrow",
)

# Object colours, most frequent first. Saturated and far apart so that a tiny
# CLIP model can tell them apart after JPEG compression.
COLOURS: MappingProxyType[str, RGB] = MappingProxyType(
    {
        "red": (214, 32, 32),
        "blue": (32, 72, 218),
        "green": (34, 158, 52),
        "black": (22, 22, 22),
        "white": (248, 248, 248),
        "yellow": (246, 212, 24),
        "orange": (244, 128, 20),
        "purple": (128, 42, 168),
        "pink": (240, 104, 172),
        "brown": (118, 70, 30),
    }
)

# Background base tones. They are never named in captions (several would
# collide with object colour words), they only add visual variety.
TONES: MappingProxyType[str, RGB] = MappingProxyType(
    {
        "paper": (246, 246, 244),
        "cream": (250, 240, 214),
        "silver": (214, 214, 214),
        "sky": (210, 226, 246),
        "mint": (214, 240, 216),
        "blush": (250, 226, 232),
        "slate": (62, 64, 70),
        "navy": (30, 36, 72),
    }
)

BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "gradient", "noisy")
STYLES: tuple[str, ...] = ("filled", "outlined", "shadow", "sticker")
SIZES: tuple[str, ...] = ("small", "medium", "large")
POSITIONS: tuple[str, ...] = (
    "center",
    "left",
    "right",
    "top",
    "bottom",
    "top left",
    "top right",
    "bottom left",
    "bottom right",
)
IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "png")
EDITS: tuple[str, ...] = ("none", "resize", "crop")

# Minimum luma distance between an object colour and a background tone; below
# it a yellow star on cream paper is hard to see even for a human.
_MIN_LUMA_CONTRAST = 60.0


def _luma(colour: RGB) -> float:
    red, green, blue = colour
    return 0.299 * red + 0.587 * green + 0.114 * blue


def tones_for(colour: str) -> tuple[str, ...]:
    """Background tones on which ``colour`` stays clearly visible."""
    object_luma = _luma(COLOURS[colour])
    return tuple(
        tone for tone, rgb in TONES.items() if abs(_luma(rgb) - object_luma) >= _MIN_LUMA_CONTRAST
    )


@dataclass(frozen=True)
class ItemSpec:
    """Everything needed to render one image, and nothing that depends on the URL.

    ``seed`` drives the incidental randomness (exact placement, rotation,
    texture); the other fields are the facts a caption may state.  Exactly one
    of ``shape`` and ``digit`` is set.
    """

    seed: int
    shape: str | None
    digit: int | None
    colour: str
    background: str
    tone: str
    count: int = 1
    position: str = "center"
    size: str = "medium"
    style: str = "filled"
    width: int = 224
    height: int = 224
    image_format: str = "jpeg"
    quality: int = 90
    # Post-processing used for near duplicates: the scene is drawn exactly as
    # for the source, then resized by ``edit_amount`` or cropped by
    # ``edit_amount`` of each side.
    edit: str = "none"
    edit_amount: float = 0.0

    def __post_init__(self) -> None:
        if (self.shape is None) == (self.digit is None):
            raise ValueError("exactly one of shape and digit must be set")
        if self.shape is not None and self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.digit is not None and not 0 <= self.digit <= 9:
            raise ValueError(f"digit out of range: {self.digit}")
        _check_member("colour", self.colour, COLOURS)
        _check_member("background", self.background, BACKGROUNDS)
        _check_member("tone", self.tone, TONES)
        _check_member("position", self.position, POSITIONS)
        _check_member("size", self.size, SIZES)
        _check_member("style", self.style, STYLES)
        _check_member("image_format", self.image_format, IMAGE_FORMATS)
        _check_member("edit", self.edit, EDITS)
        if not 1 <= self.count <= 4:
            raise ValueError(f"count out of range: {self.count}")
        if self.width < 1 or self.height < 1:
            raise ValueError("image size must be positive")

    @property
    def content_type(self) -> str:
        return "image/png" if self.image_format == "png" else "image/jpeg"

    @property
    def extension(self) -> str:
        return "png" if self.image_format == "png" else "jpg"


def _check_member(field: str, value: str, allowed: Collection[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}")


def render_item(spec: ItemSpec) -> bytes:
    """Encoded image bytes (JPEG or PNG, per ``spec.image_format``) for ``spec``."""
    image = _apply_edit(draw_scene(spec), spec)
    buffer = io.BytesIO()
    if spec.image_format == "png":
        # Level 1: PNG is only ~10% of responses but would otherwise dominate
        # server CPU time; the bytes are still deterministic.
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=spec.quality)
    return buffer.getvalue()


def draw_scene(spec: ItemSpec) -> Image.Image:
    """The decoded scene (before near-duplicate edits and encoding)."""
    layout_rng = random.Random(spec.seed)
    texture_rng = np.random.default_rng(spec.seed)
    image = _draw_background(spec, layout_rng, texture_rng)
    draw = ImageDraw.Draw(image)
    for centre_x, centre_y, radius in _object_placements(spec, layout_rng):
        polygons = _glyph_polygons(spec, layout_rng, centre_x, centre_y, radius)
        _draw_glyph(draw, polygons, spec, radius, (centre_x, centre_y))
    return image


# --------------------------------------------------------------------------
# Backgrounds


def _mix(colour: RGB, target: RGB, amount: float) -> RGB:
    red, green, blue = (round(c + (t - c) * amount) for c, t in zip(colour, target))
    return (red, green, blue)


def _contrast_target(tone: RGB) -> RGB:
    """Patterns darken light tones and lighten dark ones, so they stay subtle."""
    return (0, 0, 0) if _luma(tone) > 128 else (255, 255, 255)


def _draw_background(
    spec: ItemSpec, layout_rng: random.Random, texture_rng: np.random.Generator
) -> Image.Image:
    width, height = spec.width, spec.height
    base = TONES[spec.tone]
    target = _contrast_target(base)
    accent = _mix(base, target, 0.16)
    if spec.background == "plain":
        return Image.new("RGB", (width, height), base)
    if spec.background == "gradient":
        mask = Image.linear_gradient("L") if layout_rng.random() < 0.7 else Image.radial_gradient("L")
        if layout_rng.random() < 0.5:
            mask = mask.transpose(Image.Transpose.ROTATE_90)
        mask = mask.resize((width, height), Image.Resampling.BILINEAR)
        far = Image.new("RGB", (width, height), _mix(base, target, 0.35))
        return Image.composite(far, Image.new("RGB", (width, height), base), mask)
    if spec.background == "noisy":
        coarse = _noise_mask(texture_rng, width, height, cell=24)
        fine = _noise_mask(texture_rng, width, height, cell=3)
        mask = Image.blend(coarse, fine, 0.35)
        dark = Image.new("RGB", (width, height), _mix(base, (0, 0, 0), 0.22))
        light = Image.new("RGB", (width, height), _mix(base, (255, 255, 255), 0.22))
        return Image.composite(light, dark, mask)

    # The periodic patterns: one tile repeated. Period scales with the image
    # so that a pattern looks the same at 224 px and at 900 px; it is even so
    # that the two halves of a stripe or checker pair tile seamlessly.
    period = 2 * max(2, round(min(width, height) * layout_rng.uniform(0.03, 0.06)))
    ys, xs = np.mgrid[0:period, 0:period]
    if spec.background == "striped":
        orientation = layout_rng.choice(("horizontal", "vertical", "diagonal"))
        if orientation == "horizontal":
            on = ys < period // 2
        elif orientation == "vertical":
            on = xs < period // 2
        else:
            on = (xs + ys) % period < period // 2
    elif spec.background == "dotted":
        centre = (period - 1) / 2
        on = (xs - centre) ** 2 + (ys - centre) ** 2 <= (0.27 * period) ** 2
    elif spec.background == "checkered":
        half = period // 2
        on = ((xs // half) + (ys // half)) % 2 == 1
    else:
        raise ValueError(f"unknown background {spec.background!r}")
    tile = np.where(on[..., None], np.array(accent, np.uint8), np.array(base, np.uint8))
    reps_y = -(-height // period)
    reps_x = -(-width // period)
    pixels = np.tile(tile, (reps_y, reps_x, 1))[:height, :width]
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _noise_mask(rng: np.random.Generator, width: int, height: int, cell: int) -> Image.Image:
    grid = rng.integers(0, 256, size=(max(2, height // cell), max(2, width // cell)), dtype=np.uint8)
    return Image.fromarray(grid, "L").resize((width, height), Image.Resampling.BILINEAR)


# --------------------------------------------------------------------------
# Object layout

# Object radius as a fraction of the image's shorter side, for one object.
_SINGLE_RADIUS = MappingProxyType({"small": 0.14, "medium": 0.22, "large": 0.38})
# Sticker rim scale and drop-shadow offset, in radii.
_STICKER_RIM = 1.16
_SHADOW_OFFSET = 0.09
_ANCHORS = MappingProxyType(
    {
        "center": (0.5, 0.5),
        "left": (0.25, 0.5),
        "right": (0.75, 0.5),
        "top": (0.5, 0.25),
        "bottom": (0.5, 0.75),
        "top left": (0.25, 0.25),
        "top right": (0.75, 0.25),
        "bottom left": (0.25, 0.75),
        "bottom right": (0.75, 0.75),
    }
)


def _object_placements(spec: ItemSpec, rng: random.Random) -> list[tuple[float, float, float]]:
    """(centre x, centre y, radius) in pixels for each object in the scene."""
    width, height = spec.width, spec.height
    short_side = min(width, height)
    if spec.count == 1:
        radius = _SINGLE_RADIUS[spec.size] * short_side * rng.uniform(0.92, 1.06)
        anchor_x, anchor_y = _ANCHORS[spec.position]
        jitter = 0.03 * short_side
        # Keep the whole object inside the frame; a shape cut by the border is
        # a worse training example and would make "left"/"top" ambiguous.
        margin = radius * _extent(spec)
        centre_x = _clamp(anchor_x * width + rng.uniform(-jitter, jitter), margin, width - margin)
        centre_y = _clamp(anchor_y * height + rng.uniform(-jitter, jitter), margin, height - margin)
        return [(centre_x, centre_y, radius)]

    columns, rows = _grid_for(spec.count, width / height)
    cells = [(column, row) for row in range(rows) for column in range(columns)]
    if len(cells) > spec.count:
        # Three objects in a 2x2 grid: leave a random cell empty.
        cells.pop(rng.randrange(len(cells)))
    cell_width, cell_height = width / columns, height / rows
    base_radius = 0.40 * min(cell_width, cell_height) / _extent(spec)
    placements = []
    for column, row in cells:
        radius = base_radius * rng.uniform(0.88, 1.04)
        jitter_x, jitter_y = 0.06 * cell_width, 0.06 * cell_height
        centre_x = (column + 0.5) * cell_width + rng.uniform(-jitter_x, jitter_x)
        centre_y = (row + 0.5) * cell_height + rng.uniform(-jitter_y, jitter_y)
        placements.append((centre_x, centre_y, radius))
    return placements


def _extent(spec: ItemSpec) -> float:
    """How far (in radii) the drawn object may reach from its centre,
    including rotation, the sticker rim and the drop shadow."""
    reach = 1.15 if spec.shape == "crescent" else 1.0
    if spec.style == "sticker":
        reach *= _STICKER_RIM
    if spec.style in ("shadow", "sticker"):
        reach += _SHADOW_OFFSET
    return reach + 0.04


def _grid_for(count: int, aspect: float) -> tuple[int, int]:
    """(columns, rows) for ``count`` objects in an image of the given aspect ratio."""
    wide = aspect >= 1.0
    long_ratio = aspect if wide else 1.0 / aspect
    if count == 2 or (count == 3 and long_ratio >= 1.4) or (count == 4 and long_ratio >= 2.0):
        line = (count, 1)
    else:
        line = (2, 2)
    return line if wide else (line[1], line[0])


def _clamp(value: float, low: float, high: float) -> float:
    if low > high:
        return (low + high) / 2
    return min(max(value, low), high)


# --------------------------------------------------------------------------
# Glyphs: each shape is a polygon in unit coordinates (radius ~1, image axes,
# y pointing down), rotated, scaled and translated at draw time.


def _regular(points: int, radius: float = 1.0, start_degrees: float = -90.0) -> tuple[Point, ...]:
    step = 2 * math.pi / points
    start = math.radians(start_degrees)
    return tuple(
        (radius * math.cos(start + i * step), radius * math.sin(start + i * step)) for i in range(points)
    )


def _star() -> tuple[Point, ...]:
    outer = _regular(5, 1.0)
    inner = _regular(5, 0.42, -90.0 + 36.0)
    return tuple(point for pair in zip(outer, inner) for point in pair)


def _heart() -> tuple[Point, ...]:
    points = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        points.append((x / 16.5, (y + 2.5) / 16.5))
    return tuple(points)


def _crescent() -> tuple[Point, ...]:
    """Unit circle minus a circle of radius 0.85 centred at (0.45, 0): the
    outer arc runs the long way round the left, the inner arc comes back."""
    bite_x, bite_radius = 0.45, 0.85
    # Intersection of x^2 + y^2 = 1 and (x - bite_x)^2 + y^2 = bite_radius^2.
    cross_x = (1 + bite_x**2 - bite_radius**2) / (2 * bite_x)
    cross_y = math.sqrt(1 - cross_x**2)
    outer_start = math.atan2(cross_y, cross_x)
    inner_start = math.atan2(-cross_y, cross_x - bite_x) + 2 * math.pi
    inner_end = math.atan2(cross_y, cross_x - bite_x)
    steps = 32
    outer = [
        (math.cos(a), math.sin(a))
        for a in np.linspace(outer_start, 2 * math.pi - outer_start, steps)
    ]
    inner = [
        (bite_x + bite_radius * math.cos(a), bite_radius * math.sin(a))
        for a in np.linspace(inner_start, inner_end, steps)[1:-1]
    ]
    # Shift right so the visual mass, not the full circle, sits on the anchor
    # (the farthest point then lies ~1.12 from the centre; see _extent).
    return tuple((x + 0.2, y) for x, y in outer + inner)


_UNIT_SHAPES: MappingProxyType[str, tuple[Point, ...]] = MappingProxyType(
    {
        "circle": _regular(48),
        "square": ((-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)),
        "triangle": tuple((x, y + 0.12) for x, y in _regular(3, 1.05)),
        "star": _star(),
        "heart": _heart(),
        "cross": (
            (-0.3, -0.92), (0.3, -0.92), (0.3, -0.3), (0.92, -0.3), (0.92, 0.3), (0.3, 0.3),
            (0.3, 0.92), (-0.3, 0.92), (-0.3, 0.3), (-0.92, 0.3), (-0.92, -0.3), (-0.3, -0.3),
        ),
        "hexagon": _regular(6, 0.95, 0.0),
        # Taller than wide, so that it never looks like a square turned 45 degrees.
        "diamond": ((0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)),
        "crescent": _crescent(),
        "arrow": (
            (-0.92, -0.2), (0.12, -0.2), (0.12, -0.56), (0.95, 0.0),
            (0.12, 0.56), (0.12, 0.2), (-0.92, 0.2),
        ),
    }
)

# How far each shape may be rotated without changing what it is (a square
# turned 45 degrees reads as a diamond).
_ROTATION_JITTER_DEGREES = MappingProxyType(
    {
        "circle": 0.0,
        "square": 10.0,
        "triangle": 12.0,
        "star": 15.0,
        "heart": 12.0,
        "cross": 10.0,
        "hexagon": 8.0,
        "diamond": 8.0,
        "crescent": 180.0,
        "arrow": 12.0,
    }
)

# Seven-segment layout: segment name -> (x0, y0, x1, y1) in unit coordinates.
_SEGMENTS = MappingProxyType(
    {
        "a": (-0.46, -0.92, 0.46, -0.92),
        "b": (0.52, -0.86, 0.52, -0.06),
        "c": (0.52, 0.06, 0.52, 0.86),
        "d": (-0.46, 0.92, 0.46, 0.92),
        "e": (-0.52, 0.06, -0.52, 0.86),
        "f": (-0.52, -0.86, -0.52, -0.06),
        "g": (-0.46, 0.0, 0.46, 0.0),
    }
)
_DIGIT_SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")
_SEGMENT_THICKNESS = 0.2


def _segment_polygon(x0: float, y0: float, x1: float, y1: float) -> tuple[Point, ...]:
    """A hexagonal bar from (x0, y0) to (x1, y1) with pointed ends."""
    half = _SEGMENT_THICKNESS / 2
    if y0 == y1:  # horizontal
        return (
            (x0, y0), (x0 + half, y0 - half), (x1 - half, y0 - half),
            (x1, y0), (x1 - half, y0 + half), (x0 + half, y0 + half),
        )
    return (
        (x0, y0), (x0 + half, y0 + half), (x0 + half, y1 - half),
        (x0, y1), (x0 - half, y1 - half), (x0 - half, y0 + half),
    )


def _glyph_polygons(
    spec: ItemSpec, rng: random.Random, centre_x: float, centre_y: float, radius: float
) -> list[list[Point]]:
    """Pixel-space polygons for one object (one for a shape, several for a digit)."""
    if spec.shape is not None:
        unit_polygons = [_UNIT_SHAPES[spec.shape]]
        jitter = _ROTATION_JITTER_DEGREES[spec.shape]
        degrees = rng.uniform(-jitter, jitter)
        if spec.shape == "arrow":
            degrees += 90 * rng.randrange(4)
    else:
        assert spec.digit is not None
        unit_polygons = [_segment_polygon(*_SEGMENTS[s]) for s in _DIGIT_SEGMENTS[spec.digit]]
        degrees = rng.uniform(-6.0, 6.0)
    angle = math.radians(degrees)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [
        [
            (centre_x + radius * (x * cos_a - y * sin_a), centre_y + radius * (x * sin_a + y * cos_a))
            for x, y in polygon
        ]
        for polygon in unit_polygons
    ]


def _scaled(polygon: list[Point], centre: Point, factor: float) -> list[Point]:
    cx, cy = centre
    return [(cx + (x - cx) * factor, cy + (y - cy) * factor) for x, y in polygon]


def _shifted(polygon: list[Point], offset: float) -> list[Point]:
    return [(x + offset, y + offset) for x, y in polygon]


def _draw_glyph(
    draw: ImageDraw.ImageDraw,
    polygons: list[list[Point]],
    spec: ItemSpec,
    radius: float,
    centre: Point,
) -> None:
    colour = COLOURS[spec.colour]
    shadow = _mix(TONES[spec.tone], (0, 0, 0), 0.55)
    offset = max(1.0, radius * _SHADOW_OFFSET)
    if spec.style == "outlined":
        line_width = max(1, round(radius * 0.12))
        for polygon in polygons:
            draw.polygon(polygon, outline=colour, width=line_width)
        return
    if spec.style == "shadow":
        for polygon in polygons:
            draw.polygon(_shifted(polygon, offset), fill=shadow)
    elif spec.style == "sticker":
        # A die-cut sticker: a white rim (dark rim for white objects) with a
        # soft shadow, under the coloured shape.
        rim = (250, 250, 250) if spec.colour != "white" else (40, 40, 40)
        rims = [_scaled(polygon, centre, _STICKER_RIM) for polygon in polygons]
        for polygon in rims:
            draw.polygon(_shifted(polygon, offset * 0.6), fill=shadow)
        for polygon in rims:
            draw.polygon(polygon, fill=rim)
    for polygon in polygons:
        draw.polygon(polygon, fill=colour)


# --------------------------------------------------------------------------
# Near-duplicate edits


def _apply_edit(image: Image.Image, spec: ItemSpec) -> Image.Image:
    if spec.edit == "resize":
        width = max(1, round(image.width * spec.edit_amount))
        height = max(1, round(image.height * spec.edit_amount))
        return image.resize((width, height), Image.Resampling.BILINEAR)
    if spec.edit == "crop":
        dx = round(image.width * spec.edit_amount)
        dy = round(image.height * spec.edit_amount)
        return image.crop((dx, dy, image.width - dx, image.height - dy))
    return image


# --------------------------------------------------------------------------
# Decompression bomb


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def bomb_png(seed: int, side: int = 20000, rows: int = 6) -> bytes:
    """A small PNG whose header claims ``side`` x ``side`` RGB pixels.

    Only the first ``rows`` scanlines are compressed (one at a time, so at most
    one 60 kB row is ever in memory) and the zlib stream is left unfinished:
    a decoder that trusts the header would allocate ~1.2 GB before noticing.
    """
    rng = random.Random(seed)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    compressor = zlib.compressobj(9)
    compressed = []
    pattern = bytes(rng.randrange(256) for _ in range(3 * 61))
    for row in range(rows):
        scanline = b"\x00" + (pattern[row:] + pattern[:row]) * (side // 61) + bytes(3 * (side % 61))
        compressed.append(compressor.compress(scanline))
    compressed.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(compressed))
        + _png_chunk(b"IEND", b"")
    )


def tiny_jpeg_spec(spec: ItemSpec, side: int) -> ItemSpec:
    """The same scene rendered as a ``side`` x ``side`` JPEG (a useless thumbnail)."""
    return replace(spec, width=side, height=side, image_format="jpeg", edit="none", edit_amount=0.0)
