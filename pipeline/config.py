"""One small frozen dataclass per stage, and the Beam options that fill them from the command line.

Transforms take their stage's dataclass and nothing else, so the same values reach a DoFn on a
Dataflow worker as on this machine (dataclasses pickle), and no stage reads a global.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from apache_beam.options.pipeline_options import PipelineOptions

# img2dataset's default opt-out directives; "noai"/"noimageai" are the ones that matter for
# training, "noindex"/"noimageindex" are honoured because a crawler that indexes must too.
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


class ConfigError(ValueError):
    """A flag or input the user must fix; the CLI prints it without a traceback."""


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

    per_query_cap: int = 20000
    # Downloads fail and dedup removes samples: balancing aims above the cap by this factor and
    # the exact cap after download brings every query back to at most `per_query_cap`.
    oversample: float = 1.5
    seed: int = 0

    @property
    def target(self) -> float:
        return self.per_query_cap * self.oversample


@dataclasses.dataclass(frozen=True)
class CapConfig:
    per_query_cap: int = 20000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    threads: int = 32
    timeout: float = 10.0  # seconds for the whole response, not per read
    retries: int = 2
    max_retry_wait: float = 10.0  # cap on Retry-After / backoff, seconds
    max_redirects: int = 5
    max_bytes: int = 30 * 1024 * 1024
    user_agent_token: str = "openwit"
    disallowed_directives: tuple[str, ...] = DEFAULT_DISALLOWED_DIRECTIVES
    allow_private_hosts: bool = False  # loopback/private/link-local targets; the mini-web needs it
    image_size: int = 256
    resize_mode: str = "border"  # img2dataset's: no, keep_ratio, keep_ratio_largest, center_crop, border
    resize_only_if_bigger: bool = False
    encode_quality: int = 95
    min_image_size: int = 32
    max_image_area: float = 89_478_485  # Pillow's decompression-bomb threshold
    max_aspect_ratio: float = 5.0


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    output: str
    samples_per_shard: int = 10000  # candidates per shard before download, as img2dataset counts


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    """The text half: read -> normalise -> match -> dedup URLs -> count -> balance -> language."""

    read: ReadConfig
    normalise: NormaliseConfig
    match: MatchConfig
    balance: BalanceConfig
    language: LanguageConfig
    output: str

    @classmethod
    def from_options(cls, options: PipelineOptions) -> "CurateConfig":
        reject_unknown_options(options)
        o = options.view_as(BuildOptions)
        if not o.candidates:
            raise ConfigError("--candidates is required (a file, a glob, or several)")
        if not o.output:
            raise ConfigError("--output is required")
        languages = tuple(
            lang.strip() for lang in o.languages.split(",") if lang.strip() and lang.strip() != "any"
        )
        return cls(
            read=ReadConfig(
                candidates=tuple(o.candidates),
                url_column=o.url_col,
                caption_column=o.caption_col,
                input_format=o.input_format,
            ),
            normalise=NormaliseConfig(max_caption_chars=o.max_caption_chars),
            match=MatchConfig(queries=o.queries, case_sensitive=o.case_sensitive,
                              mode=o.match_mode),
            balance=BalanceConfig(
                per_query_cap=(BalanceConfig.per_query_cap if o.per_query_cap is None
                               else o.per_query_cap),
                oversample=o.oversample, seed=o.seed),
            language=LanguageConfig(
                languages=languages, min_probability=o.min_language_prob, seed=o.seed
            ),
            output=o.output.rstrip("/"),
        )


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    """The download half: plan shards -> download -> dedup images -> exact cap -> shards."""

    cap: CapConfig
    download: DownloadConfig
    shards: ShardConfig

    @classmethod
    def from_options(cls, options: PipelineOptions, default_cap: int = CapConfig.per_query_cap
                     ) -> "FetchConfig":
        """`default_cap`: the cap when --per-query-cap is not given (`openwit download`
        takes the one curation balanced for)."""
        reject_unknown_options(options)
        o = options.view_as(BuildOptions)
        if not o.output:
            raise ConfigError("--output is required")
        cap = default_cap if o.per_query_cap is None else o.per_query_cap
        return cls(
            cap=CapConfig(per_query_cap=cap, seed=o.seed),
            download=DownloadConfig(
                threads=o.download_threads,
                timeout=o.timeout,
                retries=o.retries,
                max_redirects=o.max_redirects,
                max_bytes=o.max_download_mb * 1024 * 1024,
                user_agent_token=o.user_agent_token,
                disallowed_directives=tuple(
                    d.strip().lower() for d in o.disallowed_header_directives.split(",") if d.strip()
                ),
                allow_private_hosts=o.allow_private_hosts,
                image_size=o.image_size,
                resize_mode=o.resize_mode,
                resize_only_if_bigger=o.resize_only_if_bigger,
                encode_quality=o.encode_quality,
                min_image_size=o.min_image_size,
                max_image_area=o.max_image_area,
                max_aspect_ratio=o.max_aspect_ratio,
            ),
            shards=ShardConfig(output=o.output.rstrip("/"), samples_per_shard=o.samples_per_shard),
        )


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """`openwit build`: curate and fetch in one job, into one output folder."""

    curate: CurateConfig
    fetch: FetchConfig

    @classmethod
    def from_options(cls, options: PipelineOptions) -> "BuildConfig":
        return cls(curate=CurateConfig.from_options(options),
                   fetch=FetchConfig.from_options(options))


def reject_unknown_options(options: PipelineOptions) -> None:
    """Beam only warns about flags nobody defines; a misspelt openwit flag must stop the job."""
    known = options.get_all_options(display_warnings=False)
    given = options.get_all_options(display_warnings=False, retain_unknown_options=True)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError("unknown option(s): " + ", ".join(f"--{name}" for name in unknown))


def parse_flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


class _SharedFlagGroup:
    """An argument group that skips a flag another openwit command already added.

    Beam parses every PipelineOptions subclass's flags with one parser (to tell known from
    unknown flags); `openwit build` and `openwit queries` share some (--output, --case-sensitive),
    and argparse refuses the second definition.
    """

    def __init__(self, group):
        self._group = group

    def add_argument(self, *names, **kwargs):
        try:
            self._group.add_argument(*names, **kwargs)
        except argparse.ArgumentError:
            pass


def flag_group(parser, title: str) -> _SharedFlagGroup:
    return _SharedFlagGroup(parser.add_argument_group(title))


CURATE_FLAGS = ("input", "text")
DOWNLOAD_FLAGS = ("fetch",)
BUILD_FLAGS = CURATE_FLAGS + DOWNLOAD_FLAGS


def add_build_arguments(parser, sections: tuple[str, ...] = BUILD_FLAGS) -> None:
    """The flags of `openwit build` (all sections), `curate` (input, text) or `download`
    (fetch); shared by their --help and by `BuildOptions` parsing, which takes them all."""
    d = DownloadConfig()
    g = flag_group(parser, "input and output")
    g.add_argument("--output", default=None, help="output folder (local or s3:// / gs://)")
    if "fetch" in sections:
        g.add_argument("--curated", default=None,
                       help="`openwit download`: the output folder of `openwit curate`")
    if "input" in sections:
        _add_input_arguments(g)
    if "text" in sections:
        _add_text_arguments(flag_group(parser, "text stages"))
    else:
        g = flag_group(parser, "cap")
        g.add_argument("--per-query-cap", "--per_query_cap", type=int, default=None,
                       help="at most this many samples per query (default: the cap curation "
                            "balanced for)")
        g.add_argument("--seed", type=int, default=0, help="seed for every random decision")
    if "fetch" in sections:
        _add_fetch_arguments(flag_group(parser, "download"), d)


def _add_input_arguments(g) -> None:
    g.add_argument("--candidates", action="append", default=None, metavar="PATH",
                   help="candidate list(s): parquet, csv, tsv or jsonl; a file or a glob, local or "
                        "any Beam filesystem (s3://, gs://); repeat for several")
    g.add_argument("--input-format", "--input_format", default=None,
                   choices=["parquet", "csv", "tsv", "jsonl"],
                   help="force the format (default: from each file's extension)")
    g.add_argument("--url-col", "--url_col", default=None,
                   help="URL column (default: the first of url, URL, image_url, link)")
    g.add_argument("--caption-col", "--caption_col", default=None,
                   help="caption column (default: the first of caption, TEXT, text, alt, alt_text)")


def _add_text_arguments(g) -> None:
    g.add_argument("--queries", default=None,
                   help="query table: text (one per line), a JSON list (MetaCLIP's "
                        "metadata.json) or parquet with a `query` column; without it every "
                        "caption is kept and nothing is balanced")
    g.add_argument("--case-sensitive", "--case_sensitive", type=parse_flag, default=False,
                   help="match queries case-sensitively (default false)")
    g.add_argument("--match-mode", "--match_mode", default="word", choices=["word", "metaclip"],
                   help="word: whole words, punctuation-aware, case-folded; metaclip: MetaCLIP's "
                        "reference substring semantics, case-sensitive (default word)")
    g.add_argument("--max-caption-chars", "--max_caption_chars", type=int,
                   default=NormaliseConfig.max_caption_chars)
    g.add_argument("--languages", default="en",
                   help="comma-separated ISO 639-1 codes to keep, or 'any' (default: en)")
    g.add_argument("--min-language-prob", "--min_language_prob", type=float,
                   default=LanguageConfig.min_probability)
    g.add_argument("--per-query-cap", "--per_query_cap", type=int, default=None,
                   help="at most this many samples per query (default 20000, as in the CLIP "
                        "paper; `openwit download`: the cap curation balanced for)")
    g.add_argument("--oversample", type=float, default=BalanceConfig.oversample,
                   help="balancing aims at cap x this, so that failed downloads and duplicates "
                        "do not leave queries short; the exact cap follows the download "
                        f"(default {BalanceConfig.oversample}; 1 = MetaCLIP's t exactly)")
    g.add_argument("--seed", type=int, default=0, help="seed for every random decision")


def _add_fetch_arguments(g, d: DownloadConfig) -> None:
    g.add_argument("--download-threads", "--download_threads", type=int, default=d.threads)
    g.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds for a whole response (a server that trickles bytes is cut off)")
    g.add_argument("--retries", type=int, default=d.retries,
                   help="retries after 429, 5xx and connection errors, with backoff")
    g.add_argument("--max-redirects", "--max_redirects", type=int, default=d.max_redirects)
    g.add_argument("--max-download-mb", "--max_download_mb", type=int,
                   default=d.max_bytes // (1024 * 1024))
    g.add_argument("--user-agent-token", "--user_agent_token", default=d.user_agent_token,
                   help="bot token in the User-Agent; X-Robots-Tag directives scoped to it apply")
    g.add_argument("--disallowed-header-directives", "--disallowed_header_directives",
                   default=",".join(d.disallowed_directives))
    g.add_argument("--allow-private-hosts", "--allow_private_hosts", type=parse_flag, default=False,
                   help="allow loopback/private/link-local targets (off: a crawler on a cloud "
                        "worker must not reach its metadata server)")
    g.add_argument("--image-size", "--image_size", type=int, default=d.image_size)
    g.add_argument("--resize-mode", "--resize_mode", default=d.resize_mode,
                   choices=["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"])
    g.add_argument("--resize-only-if-bigger", "--resize_only_if_bigger", type=parse_flag, default=False)
    g.add_argument("--encode-quality", "--encode_quality", type=int, default=d.encode_quality)
    g.add_argument("--min-image-size", "--min_image_size", type=int, default=d.min_image_size)
    g.add_argument("--max-image-area", "--max_image_area", type=float, default=d.max_image_area)
    g.add_argument("--max-aspect-ratio", "--max_aspect_ratio", type=float,
                   default=d.max_aspect_ratio)
    g.add_argument("--samples-per-shard", "--samples_per_shard", type=int,
                   default=ShardConfig.samples_per_shard,
                   help="candidates per shard before download (img2dataset's convention)")


class BuildOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        add_build_arguments(parser)


def validate_curate(config: CurateConfig) -> None:
    if config.balance.per_query_cap < 1:
        raise ConfigError("--per-query-cap must be at least 1")
    if not config.balance.oversample >= 1.0:
        raise ConfigError("--oversample must be at least 1")
    if not 0.0 <= config.language.min_probability <= 1.0:
        raise ConfigError("--min-language-prob must be in [0, 1]")


def validate_fetch(config: FetchConfig) -> None:
    if config.cap.per_query_cap < 1:
        raise ConfigError("--per-query-cap must be at least 1")
    if config.shards.samples_per_shard < 1:
        raise ConfigError("--samples-per-shard must be at least 1")
    if config.download.threads < 1:
        raise ConfigError("--download-threads must be at least 1")
    if config.download.max_aspect_ratio < 1 or math.isnan(config.download.max_aspect_ratio):
        raise ConfigError("--max-aspect-ratio must be at least 1")
