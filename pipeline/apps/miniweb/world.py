"""The mini-web's world: which candidate rows exist, what each image shows, what
its caption says, and how the server treats its URL.

Generation is a pure function of :class:`WorldConfig` and the base URL.  Every
random choice comes from a ``random.Random`` seeded with a string naming the
world seed, the purpose and the row, so changing one row's kind does not
reshuffle the others, and the port (which is only part of the base URL) never
changes anything but URL strings.

Held-out evaluation images are disjoint from the corpus by construction: every
item seed is a 63-bit hash shifted left by one bit, with the low bit 0 for
corpus items and 1 for evaluation items (see :func:`item_seed`), and their
attribute streams are named differently.  Only the sampling distribution is
shared, except in the "eval_copy" rows: re-encoded, resized or cropped copies of evaluation
images, planted on purpose so that decontamination (`--exclude-images`) has something to find.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from .captions import (
    CAPTION_NOISES,
    FOREIGN_LANGUAGES,
    concept_words,
    english_caption,
    foreign_caption,
    noisy_caption,
    query_words,
)
from .render import (
    COLOURS,
    POSITIONS,
    SHAPES,
    ItemSpec,
    render_item,
    tiny_jpeg_spec,
    tones_for,
)

KINDS: tuple[str, ...] = (
    "ok",
    "http_404",
    "http_500",
    "throttled",
    "slow_headers",
    "trickle",
    "redirect",
    "redirect_loop",
    "reset",
    "not_image",
    "truncated",
    "tiny",
    "bomb",
    "noai",
    "noai_bot",
    "other_bot_noai",
    "robots_disallowed",
    "exact_dup",
    "near_dup",
    "dup_url",
    "malformed_url",
    "missing_url",
    "eval_copy",
)
DUPLICATE_KINDS: frozenset[str] = frozenset({"exact_dup", "near_dup", "dup_url"})
ROBOTS_DISALLOWED_FOLDER = "/private/"  # what the mini-web's robots.txt disallows
MIN_SAMPLES = 64
T = TypeVar("T")
_STREAM_PREFIX = "openwit-miniweb"


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a mini-web.  All rates are fractions of rows."""

    samples: int = 20000
    seed: int = 0
    eval_images_per_class: int = 30
    host: str = "127.0.0.1"
    port: int = 0  # 0 = let the OS pick a free port
    # Serve the world from this many loopback addresses (host, host + 1, ...; each its own
    # port), rows spread over them in turn: a many-host list for politeness and benchmarks.
    hosts: int = 1
    slow_seconds: float = 30.0  # total duration of slow_headers / trickle responses
    user_agent_token: str = "openwit"  # bot named by bot-scoped X-Robots-Tag directives

    # Download pathologies; "ok" gets whatever is left.  Each kind with a
    # non-zero rate gets at least one row, however small ``samples`` is.
    throttled_rate: float = 0.02
    redirect_rate: float = 0.02
    exact_dup_rate: float = 0.03
    near_dup_rate: float = 0.03
    dup_url_rate: float = 0.01
    http_404_rate: float = 0.02
    http_500_rate: float = 0.01
    noai_rate: float = 0.01
    noai_bot_rate: float = 0.005
    other_bot_noai_rate: float = 0.005
    robots_disallowed_rate: float = 0.005  # under /private/, which robots.txt disallows
    not_image_rate: float = 0.01
    truncated_rate: float = 0.01
    tiny_rate: float = 0.01
    bomb_rate: float = 0.003
    reset_rate: float = 0.005
    redirect_loop_rate: float = 0.003
    slow_headers_rate: float = 0.003
    trickle_rate: float = 0.003
    malformed_url_rate: float = 0.005
    missing_url_rate: float = 0.003
    # Re-encoded or resized copies of evaluation images, planted among the "ok" rows (none
    # without an evaluation set): what decontamination must keep out of a corpus.
    eval_copy_rate: float = 0.005

    # Caption treatments, as fractions of "ok" rows (each noise type gets
    # caption_noise_rate).  Download-pathology rows always get clean English.
    foreign_rate: float = 0.05
    mislabelled_rate: float = 0.01
    caption_noise_rate: float = 0.01

    # Content distribution.
    zipf_exponent: float = 1.2  # shape and colour weights are 1 / rank**zipf_exponent
    digit_rate: float = 0.08  # items showing a digit instead of shapes
    png_rate: float = 0.10
    min_side: int = 300
    max_side: int = 900
    max_aspect: float = 2.5
    eval_image_size: int = 224

    def __post_init__(self) -> None:
        if self.samples < MIN_SAMPLES:
            raise ValueError(f"samples must be at least {MIN_SAMPLES} to hold every kind")
        rates = self.pathology_rates()
        if any(rate < 0 for rate in rates.values()) or sum(rates.values()) > 0.6:
            raise ValueError("pathology rates must be non-negative and leave most rows 'ok'")
        treatments = self.foreign_rate + self.mislabelled_rate + self.caption_noise_rate * len(CAPTION_NOISES)
        if min(self.foreign_rate, self.mislabelled_rate, self.caption_noise_rate) < 0 or treatments > 0.5:
            raise ValueError("caption treatment rates must be non-negative and sum to at most 0.5")
        if not 0 <= self.digit_rate < 1 or not 0 <= self.png_rate <= 1:
            raise ValueError("digit_rate and png_rate must be fractions")
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError("need 16 <= min_side <= max_side")
        if self.max_aspect < 1:
            raise ValueError("max_aspect must be at least 1")
        if self.slow_seconds <= 0:
            raise ValueError("slow_seconds must be positive")
        if not 0 <= self.eval_copy_rate <= 0.1:
            raise ValueError("eval_copy_rate must be in [0, 0.1]")
        if self.eval_images_per_class < 0 or self.eval_image_size < 16:
            raise ValueError("invalid eval set size")
        if not 1 <= self.hosts <= 254:
            raise ValueError("hosts must be in [1, 254]")

    def pathology_rates(self) -> dict[str, float]:
        """Rate of every kind except "ok", read from the ``<kind>_rate`` fields."""
        return {kind: getattr(self, f"{kind}_rate") for kind in KINDS
                if kind not in ("ok", "eval_copy")}


@dataclass(frozen=True)
class Row:
    """One candidate row and the truth about it."""

    row: int
    url: str | None
    caption: str | None
    kind: str
    spec: ItemSpec
    language: str = "en"
    duplicate_of: str | None = None
    caption_noise: str | None = None
    mislabelled: bool = False

    @property
    def concepts(self) -> list[str]:
        return concept_words(self.spec)

    @property
    def shape(self) -> str | None:
        return self.spec.shape


@dataclass(frozen=True)
class Route:
    """How the server answers GET for one path."""

    kind: str  # a KINDS entry; "ok" for plain images such as redirect targets
    spec: ItemSpec | None = None
    location: str | None = None  # absolute URL, for redirects
    truncate_at: float | None = None  # fraction of the body sent, for "truncated"


@dataclass(frozen=True)
class World:
    config: WorldConfig
    base_url: str  # the first host's
    rows: tuple[Row, ...]
    routes: Mapping[str, Route]
    base_urls: tuple[str, ...] = ()  # every host's, in the order rows take them

    def counts(self) -> dict[str, dict[str, int]]:
        """Row counts per kind, shape ("digit" for digit items), language,
        caption noise and mislabelling."""
        shapes = Counter(row.spec.shape if row.spec.shape else "digit" for row in self.rows)
        noises = Counter(row.caption_noise for row in self.rows)
        return {
            "kind": {kind: sum(1 for row in self.rows if row.kind == kind) for kind in KINDS},
            "shape": {shape: shapes[shape] for shape in (*SHAPES, "digit")},
            "language": dict(Counter(row.language for row in self.rows).most_common()),
            "caption_noise": {noise: noises[noise] for noise in CAPTION_NOISES},
            "mislabelled": dict(Counter(str(row.mislabelled).lower() for row in self.rows)),
        }


def stream(world_seed: int, purpose: str, *keys: object) -> random.Random:
    """An independent random stream for one purpose (string seeds are hashed
    with SHA-512 by ``random``, so they are stable across runs and platforms)."""
    return random.Random("/".join([_STREAM_PREFIX, str(world_seed), purpose, *map(str, keys)]))


def item_seed(world_seed: int, domain: str, *keys: object) -> int:
    """Pixel-level seed of one item; corpus seeds are even, eval seeds odd."""
    if domain not in ("corpus", "eval"):
        raise ValueError(f"unknown seed domain {domain!r}")
    text = "/".join([_STREAM_PREFIX, str(world_seed), "pixels", *map(str, keys)])
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1
    return (value << 1) | (1 if domain == "eval" else 0)


def zipf_weights(count: int, exponent: float) -> list[float]:
    return [1.0 / rank**exponent for rank in range(1, count + 1)]


# --------------------------------------------------------------------------
# Scene sampling (shared by corpus and eval set)

_BACKGROUND_WEIGHTS = MappingProxyType(
    {"plain": 3.0, "striped": 2.0, "dotted": 2.0, "checkered": 1.5, "gradient": 2.0, "noisy": 1.5}
)
_COUNT_WEIGHTS = MappingProxyType({1: 55, 2: 20, 3: 13, 4: 12})
_SIZE_WEIGHTS = MappingProxyType({"small": 30, "medium": 45, "large": 25})
_STYLE_WEIGHTS = MappingProxyType({"filled": 45, "outlined": 20, "shadow": 20, "sticker": 15})
_ASPECTS = (1.0, 1.0, 1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 2.5)


def _weighted(rng: random.Random, weights: Mapping[T, float]) -> T:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def sample_scene(
    rng: random.Random,
    seed: int,
    config: WorldConfig,
    shape: str | None = None,
    square_side: int | None = None,
) -> ItemSpec:
    """Draw one item's attributes.  ``shape`` forces a shape (eval classes);
    ``square_side`` forces a square JPEG of that size (eval images)."""
    digit = None
    if shape is None:
        if rng.random() < config.digit_rate:
            digit = rng.randrange(10)
        else:
            shape = rng.choices(SHAPES, weights=zipf_weights(len(SHAPES), config.zipf_exponent))[0]
    colour = rng.choices(list(COLOURS), weights=zipf_weights(len(COLOURS), config.zipf_exponent))[0]
    tone = rng.choice(tones_for(colour))
    background = _weighted(rng, _BACKGROUND_WEIGHTS)
    count = 1 if digit is not None else _weighted(rng, _COUNT_WEIGHTS)
    if count > 1:
        size = "medium"
    elif digit is not None:
        size = rng.choice(("medium", "large"))
    else:
        size = _weighted(rng, _SIZE_WEIGHTS)
    # A large object fills the frame, so only smaller single objects can sit
    # somewhere other than the centre.
    position = "center"
    if count == 1 and size != "large" and rng.random() < 0.6:
        position = rng.choice(POSITIONS[1:])
    style = _weighted(rng, _STYLE_WEIGHTS)
    if digit is not None and style == "outlined":
        style = "filled"  # thin outlined segments read poorly as digits

    if square_side is not None:
        width = height = square_side
        image_format, quality = "jpeg", 90
    else:
        width, height = _sample_size(rng, config)
        image_format = "png" if rng.random() < config.png_rate else "jpeg"
        quality = rng.randint(80, 95)
    return ItemSpec(
        seed=seed,
        shape=shape,
        digit=digit,
        colour=colour,
        background=background,
        tone=tone,
        count=count,
        position=position,
        size=size,
        style=style,
        width=width,
        height=height,
        image_format=image_format,
        quality=quality,
    )


def _sample_size(rng: random.Random, config: WorldConfig) -> tuple[int, int]:
    aspect = min(rng.choice(_ASPECTS), config.max_aspect)
    short_side = rng.randint(config.min_side, max(config.min_side, round(0.75 * config.max_side)))
    long_side = min(config.max_side, round(short_side * aspect))
    return (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)


# --------------------------------------------------------------------------
# Corpus generation


@dataclass(frozen=True)
class _CaptionPlan:
    """What an "ok" row's caption does besides describing the image."""

    language: str = "en"
    noise: str | None = None
    mislabelled: bool = False

    @property
    def clean(self) -> bool:
        return self.language == "en" and self.noise is None and not self.mislabelled


_CLEAN = _CaptionPlan()


def generate_world(config: WorldConfig, base_urls: str | Sequence[str]) -> World:
    """The full world for ``config``, with row ``i``'s URLs under ``base_urls[i % n]`` (every
    server serves every route; a row's redirects stay on its own host)."""
    if isinstance(base_urls, str):
        base_urls = [base_urls]
    base_urls = [base.rstrip("/") for base in base_urls]
    kinds = _plan_kinds(config)
    specs = [
        sample_scene(stream(config.seed, "scene", row), item_seed(config.seed, "corpus", row), config)
        for row in range(config.samples)
    ]
    plans = _plan_captions(config, kinds, specs)
    _put_a_source_first(kinds, plans)
    eval_copies = _plan_eval_copies(config, kinds, plans)

    rows: list[Row] = []
    routes: dict[str, Route] = {}
    clean_sources: list[Row] = []  # earlier clean "ok" rows that duplicates may copy
    for index, (kind, spec, plan) in enumerate(zip(kinds, specs, plans)):
        rng = stream(config.seed, "row", index)
        token = _url_token(config.seed, index)
        base_url = base_urls[index % len(base_urls)]
        if index in eval_copies:
            row = _eval_copy_row(index, eval_copies[index], token, rng, base_url, routes)
        elif kind in DUPLICATE_KINDS:
            row = _duplicate_row(index, kind, token, rng.choice(clean_sources), rng, base_url, routes)
        elif kind == "ok":
            row = _ok_row(index, spec, plan, token, rng, base_url, routes)
            if plan.clean:
                clean_sources.append(row)
        else:
            row = _pathology_row(index, kind, spec, token, rng, base_url, routes)
        rows.append(row)
    return World(config=config, base_url=base_urls[0], rows=tuple(rows),
                 routes=MappingProxyType(routes), base_urls=tuple(base_urls))


def _plan_kinds(config: WorldConfig) -> list[str]:
    kinds = []
    for kind, rate in config.pathology_rates().items():
        if rate > 0:
            kinds += [kind] * max(1, round(rate * config.samples))
    if len(kinds) > config.samples // 2:
        raise ValueError("too few samples for the configured pathology rates")
    kinds += ["ok"] * (config.samples - len(kinds))
    stream(config.seed, "kinds").shuffle(kinds)
    return kinds


def _treatment_count(rate: float, ok_rows: int, minimum: int = 1) -> int:
    return 0 if rate <= 0 else max(minimum, round(rate * ok_rows))


def _plan_captions(config: WorldConfig, kinds: list[str], specs: list[ItemSpec]) -> list[_CaptionPlan]:
    """Pick which "ok" rows get foreign, mislabelled or noisy captions.  Exact
    counts (at least one of each, every language at least once) so that small
    test worlds still contain every case."""
    rng = stream(config.seed, "captions")
    ok_rows = [row for row, kind in enumerate(kinds) if kind == "ok"]
    shape_rows = [row for row in ok_rows if specs[row].shape is not None]
    foreign = _treatment_count(config.foreign_rate, len(ok_rows), minimum=len(FOREIGN_LANGUAGES))
    mislabelled = _treatment_count(config.mislabelled_rate, len(ok_rows))
    noisy = _treatment_count(config.caption_noise_rate, len(ok_rows))
    needed = foreign + mislabelled + noisy * len(CAPTION_NOISES)
    if foreign + mislabelled > len(shape_rows) or needed > len(ok_rows) // 2:
        raise ValueError("too few 'ok' rows for the configured caption treatment rates")

    plans = [_CLEAN] * len(kinds)
    shape_picks = rng.sample(shape_rows, foreign + mislabelled)
    languages = [FOREIGN_LANGUAGES[i % len(FOREIGN_LANGUAGES)] for i in range(foreign)]
    rng.shuffle(languages)
    for row, language in zip(shape_picks, languages):
        plans[row] = _CaptionPlan(language=language)
    for row in shape_picks[foreign:]:
        plans[row] = _CaptionPlan(mislabelled=True)
    untreated = [row for row in ok_rows if plans[row] is _CLEAN]
    noise_picks = rng.sample(untreated, noisy * len(CAPTION_NOISES))
    for position, row in enumerate(noise_picks):
        plans[row] = _CaptionPlan(noise=CAPTION_NOISES[position // noisy])
    return plans


def _plan_eval_copies(config: WorldConfig, kinds: list[str],
                      plans: list[_CaptionPlan]) -> dict[int, tuple[str, ItemSpec]]:
    """row -> (evaluation image path, its edited copy) for the rows that show an evaluation
    image: clean "ok" rows after the first duplicate's source, so nothing else moves."""
    specs = eval_specs(config)
    images = [(f"{shape}/{index:04d}.jpg", spec) for shape, shape_specs in specs.items()
              for index, spec in enumerate(shape_specs)]
    if not images or config.eval_copy_rate <= 0:
        return {}
    clean = [row for row, kind in enumerate(kinds) if kind == "ok" and plans[row].clean]
    eligible = clean[1:]  # the first clean row is the duplicates' first source
    rng = stream(config.seed, "eval_copies")
    count = min(len(eligible) // 4, max(1, round(config.eval_copy_rate * config.samples)))
    copies = {}
    for row in sorted(rng.sample(eligible, count)):
        path, spec = rng.choice(images)
        copies[row] = (path, _copy_edit(spec, rng))
    return copies


def _copy_edit(spec: ItemSpec, rng: random.Random) -> ItemSpec:
    """An evaluation image re-encoded, resized or lightly cropped, as a web copy of it would be."""
    edit = rng.choice(("requality", "resize", "crop"))
    if edit == "requality":
        qualities = [quality for quality in range(55, 96) if abs(quality - spec.quality) >= 10]
        return replace(spec, image_format="jpeg", quality=rng.choice(qualities))
    if edit == "resize":
        return replace(spec, edit="resize", edit_amount=round(rng.uniform(0.6, 0.8), 3))
    return replace(spec, edit="crop", edit_amount=round(rng.uniform(0.02, 0.05), 3))


def _eval_copy_row(index: int, copy: tuple[str, ItemSpec], token: str, rng: random.Random,
                   base_url: str, routes: dict[str, Route]) -> Row:
    path_in_eval_set, spec = copy
    path = f"/img/{token}.{spec.extension}"
    _add_route(routes, path, Route(kind="ok", spec=spec))
    return Row(row=index, url=base_url + path, caption=english_caption(spec, rng),
               kind="eval_copy", spec=spec, duplicate_of=f"eval/{path_in_eval_set}")


def _put_a_source_first(kinds: list[str], plans: list[_CaptionPlan]) -> None:
    """Duplicates copy an earlier clean "ok" row; if the shuffle put a duplicate
    before every such row, swap the first duplicate with the first clean row."""
    first_clean = next(row for row, kind in enumerate(kinds) if kind == "ok" and plans[row].clean)
    first_duplicate = next((row for row, kind in enumerate(kinds) if kind in DUPLICATE_KINDS), None)
    if first_duplicate is not None and first_duplicate < first_clean:
        kinds[first_duplicate], kinds[first_clean] = kinds[first_clean], kinds[first_duplicate]
        plans[first_duplicate], plans[first_clean] = plans[first_clean], plans[first_duplicate]


def _url_token(world_seed: int, row: int) -> str:
    text = f"{_STREAM_PREFIX}/{world_seed}/url/{row}"
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _add_route(routes: dict[str, Route], path: str, route: Route) -> None:
    if path in routes:  # 48-bit tokens: a clash would be a bug, not bad luck
        raise RuntimeError(f"two routes for {path}")
    routes[path] = route


def _ok_row(
    index: int,
    spec: ItemSpec,
    plan: _CaptionPlan,
    token: str,
    rng: random.Random,
    base_url: str,
    routes: dict[str, Route],
) -> Row:
    if plan.language != "en":
        caption = foreign_caption(spec, plan.language, rng)
    elif plan.mislabelled:
        assert spec.shape is not None
        wrong_shape = rng.choice([shape for shape in SHAPES if shape != spec.shape])
        caption = english_caption(replace(spec, shape=wrong_shape), rng)
    elif plan.noise is not None:
        caption = noisy_caption(plan.noise, spec, rng)
    else:
        caption = english_caption(spec, rng)
    path = f"/img/{token}.{spec.extension}"
    _add_route(routes, path, Route(kind="ok", spec=spec))
    return Row(
        row=index,
        url=base_url + path,
        caption=caption,
        kind="ok",
        spec=spec,
        language=plan.language,
        caption_noise=plan.noise,
        mislabelled=plan.mislabelled,
    )


def _different_caption(spec: ItemSpec, avoid: str | None, rng: random.Random) -> str:
    """An English caption of ``spec`` that differs from ``avoid``."""
    for _ in range(20):
        caption = english_caption(spec, rng)
        if caption != avoid:
            return caption
    return f"{caption} ({spec.colour})"


def _duplicate_row(
    index: int,
    kind: str,
    token: str,
    source: Row,
    rng: random.Random,
    base_url: str,
    routes: dict[str, Route],
) -> Row:
    assert source.url is not None
    caption = _different_caption(source.spec, source.caption, rng)
    if kind == "dup_url":
        return Row(
            row=index, url=source.url, caption=caption, kind=kind, spec=source.spec, duplicate_of=source.url
        )
    spec = source.spec if kind == "exact_dup" else _near_duplicate(source.spec, rng)
    path = f"/img/{token}.{spec.extension}"
    _add_route(routes, path, Route(kind=kind, spec=spec))
    return Row(row=index, url=base_url + path, caption=caption, kind=kind, spec=spec, duplicate_of=source.url)


def _near_duplicate(spec: ItemSpec, rng: random.Random) -> ItemSpec:
    """The source scene re-encoded, resized or slightly cropped."""
    edit = rng.choice(("requality", "resize", "crop"))
    if edit == "requality":
        qualities = [quality for quality in range(55, 96) if abs(quality - spec.quality) >= 10]
        return replace(spec, image_format="jpeg", quality=rng.choice(qualities))
    if edit == "resize":
        return replace(spec, edit="resize", edit_amount=round(rng.uniform(0.6, 0.8), 3))
    return replace(spec, edit="crop", edit_amount=round(rng.uniform(0.02, 0.05), 3))


_MALFORMED_URLS = (
    "not a url",
    "ftp://example.invalid/img/{token}.jpg",
    "javascript:alert(1)",
    "http://",
    "htp:/example.invalid/{token}.jpg",
    "image {token}.jpg",
    "http:// /{token}.jpg",
)


def _pathology_row(
    index: int,
    kind: str,
    spec: ItemSpec,
    token: str,
    rng: random.Random,
    base_url: str,
    routes: dict[str, Route],
) -> Row:
    caption = english_caption(spec, rng)
    if kind == "missing_url":
        return Row(row=index, url=None, caption=caption, kind=kind, spec=spec)
    if kind == "malformed_url":
        url = rng.choice(_MALFORMED_URLS).format(token=token)
        return Row(row=index, url=url, caption=caption, kind=kind, spec=spec)

    location = None
    truncate_at = None
    if kind == "tiny":
        spec = tiny_jpeg_spec(spec, rng.choice((8, 16)))
    elif kind == "truncated":
        spec = replace(spec, image_format="jpeg")
        truncate_at = round(rng.uniform(0.5, 0.7), 3)
    elif kind == "bomb":
        spec = replace(spec, image_format="png")
    elif kind in ("not_image", "http_404", "http_500", "reset"):
        spec = replace(spec, image_format="jpeg")  # the URL claims a JPEG
    path = f"/img/{token}.{spec.extension}"
    if kind == "robots_disallowed":
        path = f"{ROBOTS_DISALLOWED_FOLDER}{token}.{spec.extension}"
    if kind == "redirect":
        target = f"/moved/{token}.{spec.extension}"
        _add_route(routes, target, Route(kind="ok", spec=spec))
        location = base_url + target
    elif kind == "redirect_loop":
        # A two-step cycle: /img/x -> /loop/x -> /img/x -> ...
        loop = f"/loop/{token}.{spec.extension}"
        _add_route(routes, loop, Route(kind=kind, spec=spec, location=base_url + path))
        location = base_url + loop
    _add_route(routes, path, Route(kind=kind, spec=spec, location=location, truncate_at=truncate_at))
    return Row(row=index, url=base_url + path, caption=caption, kind=kind, spec=spec)


# --------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class WorldFiles:
    out_dir: Path
    candidates_path: Path = field(init=False)
    ground_truth_path: Path = field(init=False)
    queries_path: Path = field(init=False)
    eval_dir: Path = field(init=False)
    world_json_path: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates_path", self.out_dir / "candidates.parquet")
        object.__setattr__(self, "ground_truth_path", self.out_dir / "ground_truth.parquet")
        object.__setattr__(self, "queries_path", self.out_dir / "queries.txt")
        object.__setattr__(self, "eval_dir", self.out_dir / "eval")
        object.__setattr__(self, "world_json_path", self.out_dir / "world.json")


_CANDIDATES_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string())])
_GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("kind", pa.string()),
        ("concepts", pa.list_(pa.string())),
        ("shape", pa.string()),
        ("language", pa.string()),
        ("duplicate_of", pa.string()),
        ("caption_noise", pa.string()),
        ("mislabelled", pa.bool_()),
    ]
)


def write_world(world: World, out_dir: Path) -> WorldFiles:
    """Write candidates, ground truth, queries, the eval set and world.json."""
    files = WorldFiles(Path(out_dir))
    files.out_dir.mkdir(parents=True, exist_ok=True)
    rows = world.rows
    candidates = pa.table(
        {"url": [row.url for row in rows], "caption": [row.caption for row in rows]},
        schema=_CANDIDATES_SCHEMA,
    )
    pq.write_table(candidates, files.candidates_path)
    truth = pa.table(
        {
            "row": [row.row for row in rows],
            "url": [row.url for row in rows],
            "caption": [row.caption for row in rows],
            "kind": [row.kind for row in rows],
            "concepts": [row.concepts for row in rows],
            "shape": [row.shape for row in rows],
            "language": [row.language for row in rows],
            "duplicate_of": [row.duplicate_of for row in rows],
            "caption_noise": [row.caption_noise for row in rows],
            "mislabelled": [row.mislabelled for row in rows],
        },
        schema=_GROUND_TRUTH_SCHEMA,
    )
    pq.write_table(truth, files.ground_truth_path)
    files.queries_path.write_text("\n".join(query_words()) + "\n", encoding="utf-8")
    write_eval_set(world.config, files.eval_dir)
    summary = {
        "config": asdict(world.config),
        "base_url": world.base_url,
        "base_urls": list(world.base_urls),
        "samples": len(rows),
        "counts": world.counts(),
        "eval": {
            "classes": list(SHAPES),
            "images_per_class": world.config.eval_images_per_class,
            "image_size": world.config.eval_image_size,
            "seeds": "eval item seeds are odd, corpus item seeds even (world.item_seed)",
        },
    }
    files.world_json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return files


def eval_specs(config: WorldConfig) -> dict[str, list[ItemSpec]]:
    """The held-out evaluation items, per shape class."""
    return {
        shape: [
            sample_scene(
                stream(config.seed, "eval", shape, index),
                item_seed(config.seed, "eval", shape, index),
                config,
                shape=shape,
                square_side=config.eval_image_size,
            )
            for index in range(config.eval_images_per_class)
        ]
        for shape in SHAPES
    }


def write_eval_set(config: WorldConfig, eval_dir: Path) -> None:
    """``eval_dir/<shape>/<NNNN>.jpg``, replacing whatever was there."""
    eval_dir = Path(eval_dir)
    if eval_dir.exists():
        shutil.rmtree(eval_dir)  # stale images from a bigger earlier set would leak in
    for shape, specs in eval_specs(config).items():
        class_dir = eval_dir / shape
        class_dir.mkdir(parents=True)
        for index, spec in enumerate(specs):
            (class_dir / f"{index:04d}.jpg").write_bytes(render_item(spec))
