"""The text half's settings: one frozen dataclass per stage, its flags, and the conversion
from parsed flags to `CurateConfig` (`openwit curate`, and the first half of `openwit build`).

Transforms take their stage's dataclass and nothing else, so the same values reach a DoFn on a
Dataflow worker as on this machine (dataclasses pickle), and no stage reads a global.
"""

from __future__ import annotations

import argparse
import dataclasses

from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import (
    add_flag,
    add_output_flag,
    add_per_query_cap_flag,
    add_seed_flag,
    parse_flag,
)

INPUT_FORMATS = ("parquet", "csv", "tsv", "jsonl")
MATCH_MODES = ("word", "metaclip")
DEFAULT_PER_QUERY_CAP = 20000  # the CLIP paper's at most ~20,000 pairs per query


@dataclasses.dataclass(frozen=True)
class ReadConfig:
    candidates: tuple[str, ...]
    url_column: str | None = None  # None: the first of url, URL, image_url, ...
    caption_column: str | None = None  # None: the first of caption, TEXT, text, ...
    input_format: str | None = None  # None: from the file extension


@dataclasses.dataclass(frozen=True)
class NormaliseConfig:
    max_caption_chars: int = 1000


@dataclasses.dataclass(frozen=True)
class MatchConfig:
    queries: str | None  # a query table: text (one per line), JSON list, or parquet `query` column
    case_sensitive: bool = False
    mode: str = "word"  # "word" (word boundaries) or "metaclip" (MetaCLIP's reference semantics)


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    languages: tuple[str, ...] = ("en",)  # empty: keep every language (and skip detection)
    min_probability: float = 0.5
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class BalanceConfig:
    """MetaCLIP's pass 2: keep with probability 1 - prod(1 - min(1, t / count)), t = cap x oversample."""

    per_query_cap: int = DEFAULT_PER_QUERY_CAP
    # Downloads fail and dedup removes samples: balancing aims above the cap by this factor and
    # the exact cap after download brings every query back to at most `per_query_cap`.
    oversample: float = 1.5
    seed: int = 0

    @property
    def target(self) -> float:
        return self.per_query_cap * self.oversample


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    """The text half: read -> normalise -> match -> dedup URLs -> count -> balance -> language."""

    read: ReadConfig
    normalise: NormaliseConfig
    match: MatchConfig
    balance: BalanceConfig
    language: LanguageConfig
    output: str

    def validate(self) -> None:
        if self.balance.per_query_cap < 1:
            raise ConfigError("--per-query-cap must be at least 1")
        if not self.balance.oversample >= 1.0:
            raise ConfigError("--oversample must be at least 1")
        if not 0.0 <= self.language.min_probability <= 1.0:
            raise ConfigError("--min-language-prob must be in [0, 1]")
        if self.normalise.max_caption_chars < 1:
            raise ConfigError("--max-caption-chars must be at least 1")


# ---------------------------------------------------------------------------------- flags


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("input")
    g.add_argument("--candidates", action="append", default=None, metavar="PATH",
                   help="candidate list(s): parquet, csv, tsv or jsonl; a file or a glob, local or "
                        "any Beam filesystem (s3://, gs://); repeat for several")
    add_flag(g, "--input-format", default=None, choices=INPUT_FORMATS,
             help="force the format (default: from each file's extension)")
    add_flag(g, "--url-col", default=None,
             help="URL column (default: the first of url, URL, image_url, link)")
    add_flag(g, "--caption-col", default=None,
             help="caption column (default: the first of caption, TEXT, text, alt, alt_text)")


def add_text_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("text stages")
    g.add_argument("--queries", default=None,
                   help="query table: text (one per line), a JSON list (MetaCLIP's "
                        "metadata.json) or parquet with a `query` column; without it every "
                        "caption is kept and nothing is balanced")
    add_flag(g, "--case-sensitive", type=parse_flag, default=False,
             help="match queries case-sensitively (default false)")
    add_flag(g, "--match-mode", default="word", choices=MATCH_MODES,
             help="word: whole words, punctuation-aware, case-folded; metaclip: MetaCLIP's "
                  "reference substring semantics, case-sensitive (default word)")
    add_flag(g, "--max-caption-chars", type=int,
             default=NormaliseConfig.max_caption_chars)
    g.add_argument("--languages", default="en",
                   help="comma-separated ISO 639-1 codes to keep, or 'any' (default: en)")
    add_flag(g, "--min-language-prob", type=float,
             default=LanguageConfig.min_probability)
    add_per_query_cap_flag(g, help=f"at most this many samples per query (default "
                                   f"{DEFAULT_PER_QUERY_CAP}, as in the CLIP paper)")
    g.add_argument("--oversample", type=float, default=BalanceConfig.oversample,
                   help="balancing aims at cap x this, so that failed downloads and duplicates "
                        "do not leave queries short; the exact cap follows the download "
                        f"(default {BalanceConfig.oversample}; 1 = MetaCLIP's t exactly)")
    add_seed_flag(g)


def add_curate_flags(parser: argparse.ArgumentParser) -> None:
    """`openwit curate`'s flags."""
    add_output_flag(parser.add_argument_group("output"),
                    help="output folder (local or s3:// / gs://)")
    add_input_flags(parser)
    add_text_flags(parser)


def curate_config(args: argparse.Namespace,
                  candidates: tuple[str, ...] | None = None) -> CurateConfig:
    """The parsed flags of `add_curate_flags` -> CurateConfig (validated). `candidates`, when
    given, are read instead of `--candidates` (`openwit build --wat` reads what it extracted)."""
    candidates = candidates or tuple(args.candidates or ())
    if not candidates:
        raise ConfigError("--candidates is required (a file, a glob, or several)")
    if not args.output:
        raise ConfigError("--output is required")
    languages = tuple(
        lang.strip() for lang in args.languages.split(",") if lang.strip() and lang.strip() != "any"
    )
    per_query_cap = DEFAULT_PER_QUERY_CAP if args.per_query_cap is None else args.per_query_cap
    config = CurateConfig(
        read=ReadConfig(candidates=candidates, url_column=args.url_col,
                        caption_column=args.caption_col, input_format=args.input_format),
        normalise=NormaliseConfig(max_caption_chars=args.max_caption_chars),
        match=MatchConfig(queries=args.queries, case_sensitive=args.case_sensitive,
                          mode=args.match_mode),
        balance=BalanceConfig(per_query_cap=per_query_cap, oversample=args.oversample,
                              seed=args.seed),
        language=LanguageConfig(languages=languages, min_probability=args.min_language_prob,
                                seed=args.seed),
        output=args.output.rstrip("/"),
    )
    config.validate()
    return config
