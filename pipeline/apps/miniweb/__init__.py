"""A tiny, deterministic, offline "web" of captioned images for tests and demos.

``MiniWeb(WorldConfig(...), out_dir)`` generates a world of candidate rows
(URL + alt text) showing coloured shapes and digits, writes the candidate list,
the ground truth, the query words and a held-out eval set into ``out_dir``,
and serves the images over HTTP on 127.0.0.1, with web pathologies (404s,
throttling, redirect loops, truncated bodies, decompression bombs, opt-out
headers, duplicates, ...) on purpose.  See ``world.KINDS``.
"""

from .captions import CAPTION_NOISES, FOREIGN_LANGUAGES, query_words
from .render import BACKGROUNDS, COLOURS, SHAPES, ItemSpec, bomb_png, render_item
from .server import MiniWeb, MiniWebServer, describe
from .world import KINDS, Route, Row, World, WorldConfig, eval_specs, generate_world, item_seed, write_world

__all__ = [
    "BACKGROUNDS",
    "CAPTION_NOISES",
    "COLOURS",
    "FOREIGN_LANGUAGES",
    "KINDS",
    "SHAPES",
    "ItemSpec",
    "MiniWeb",
    "MiniWebServer",
    "Route",
    "Row",
    "World",
    "WorldConfig",
    "bomb_png",
    "describe",
    "eval_specs",
    "generate_world",
    "item_seed",
    "query_words",
    "render_item",
    "write_world",
]
