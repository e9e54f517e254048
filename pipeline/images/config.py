"""The image half's settings: the download stage, the exact cap and the shards, their flags,
and the conversion from parsed flags to `ImageHalfConfig` (`openwit download`, and the second
half of `openwit build`)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math

from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import (
    add_flag,
    add_output_flag,
    add_per_query_cap_flag,
    add_seed_flag,
    parse_flag,
)
from openwit.pipeline.images.image_hash import HASH_KINDS, ImageHasher

# img2dataset's default opt-out directives; "noai"/"noimageai" are the ones that matter for
# training, "noindex"/"noimageindex" are honoured because a crawler that indexes must too.
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")


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
    allow_private_hosts: bool = False  # every loopback/private/link-local target (broad)
    allowed_networks: tuple[str, ...] = ()  # CIDRs let through whatever they are (narrow)
    # Politeness, per worker (a DoFn instance): requests in flight to one host, the cool-down
    # a host gets after answering 429/503 that many times in a row, and how many cool-downs
    # it gets before its remaining candidates are given up.
    max_per_host: int = 4
    cooldown_after: int = 3
    host_cooldown: float = 30.0  # seconds; Retry-After lengthens it, up to 4 times
    max_host_cooldowns: int = 3
    robots_txt: bool = False  # read and obey each origin's robots.txt (RFC 9309)
    image_size: int = 256
    resize_mode: str = "border"  # img2dataset's: no, keep_ratio, keep_ratio_largest, center_crop, border
    resize_only_if_bigger: bool = False
    encode_quality: int = 95
    min_image_size: int = 32
    max_image_area: float = 89_478_485  # Pillow's decompression-bomb threshold
    max_aspect_ratio: float = 5.0
    hash_kind: str = "phash"  # the perceptual hash of each image (image_hash.HASH_KINDS)
    hash_size: int = 16  # a hash of hash_size x hash_size bits
    # Hashes per image: the whole picture, then centre crops 0.5 % a side apart (to 5.5 %),
    # so that a lightly cropped copy is found; benchmarks/RESULTS.md has the measurement.
    hash_views: int = 12

    @property
    def hasher(self) -> ImageHasher:
        return ImageHasher(self.hash_kind, self.hash_size, self.hash_views)


@dataclasses.dataclass(frozen=True)
class CapConfig:
    per_query_cap: int = 20000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """Near-duplicates and evaluation images (stage 10), on the download stage's hashes."""

    near_distance: int = 8  # bits; benchmarks/RESULTS.md has the measurement behind it
    # Wider for evaluation images: a missed copy makes a benchmark number a lie, a wrongly
    # removed corpus image costs one sample of millions.
    eval_distance: int = 16
    hot_bucket: int = 2048  # hashes of one band value compared directly; more are sub-split
    # Near-duplicates through the crop views too (evaluation images always use them): they
    # find lightly cropped copies, which a whole-picture hash misses (benchmarks/RESULTS.md).
    near_crops: bool = True
    # Two corpus views are one picture's only when their colours (image_hash: a grid of mean
    # L*a*b*) agree within one level of this step too; 0: the hashes alone decide. Evaluation
    # images are compared by hash alone: a missed copy costs more than a lost sample.
    colour_step: int = 4
    exclude_images: tuple[str, ...] = ()  # image folders, WebDataset shards, hash lists


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    output: str
    samples_per_shard: int = 10000  # candidates per shard before download, as img2dataset counts


@dataclasses.dataclass(frozen=True)
class ImageHalfConfig:
    """The image half: plan shards -> download -> dedup images -> exact cap -> shards."""

    cap: CapConfig
    download: DownloadConfig
    shards: ShardConfig
    dedup: DedupConfig = DedupConfig()

    def validate(self) -> None:
        d = self.download
        problem = d.hasher.validate()
        if problem is not None:
            raise ConfigError(f"--hash-kind/--hash-size/--hash-views: {problem}")
        if not 0 <= self.dedup.near_distance < d.hasher.bits // 2:
            raise ConfigError(f"--near-duplicate-distance must be in [0, {d.hasher.bits // 2})")
        if not 0 <= self.dedup.eval_distance < d.hasher.bits // 2:
            raise ConfigError(f"--eval-distance must be in [0, {d.hasher.bits // 2})")
        if not 0 <= self.dedup.colour_step <= 128:
            raise ConfigError("--near-duplicate-colour-step must be in [0, 128]")
        if self.dedup.hot_bucket < 2:
            raise ConfigError("--hot-bucket must be at least 2")
        if self.cap.per_query_cap < 1:
            raise ConfigError("--per-query-cap must be at least 1")
        if self.shards.samples_per_shard < 1:
            raise ConfigError("--samples-per-shard must be at least 1")
        if d.threads < 1:
            raise ConfigError("--download-threads must be at least 1")
        if not d.timeout > 0:
            raise ConfigError("--timeout must be positive")
        if d.retries < 0:
            raise ConfigError("--retries must be at least 0")
        if d.max_redirects < 0:
            raise ConfigError("--max-redirects must be at least 0")
        if d.max_bytes < 1:
            raise ConfigError("--max-download-mb must be at least 1")
        if d.image_size < 1:
            raise ConfigError("--image-size must be at least 1")
        if not 0 <= d.encode_quality <= 100:
            raise ConfigError("--encode-quality must be in [0, 100]")
        for network in d.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"--allow-network: {network!r} is not a network (CIDR, e.g. "
                                  "127.0.0.1/32)") from None
        if d.max_per_host < 1:
            raise ConfigError("--max-per-host must be at least 1")
        if d.cooldown_after < 1:
            raise ConfigError("--cooldown-after must be at least 1")
        if not d.host_cooldown >= 0 or math.isinf(d.host_cooldown):
            raise ConfigError("--host-cooldown must be a number of seconds, at least 0")
        if d.max_host_cooldowns < 0:
            raise ConfigError("--max-host-cooldowns must be at least 0")
        if d.max_aspect_ratio < 1 or math.isnan(d.max_aspect_ratio):
            raise ConfigError("--max-aspect-ratio must be at least 1")


# ---------------------------------------------------------------------------------- flags


def add_download_stage_flags(parser: argparse.ArgumentParser) -> None:
    d = DownloadConfig()
    g = parser.add_argument_group("download")
    add_flag(g, "--download-threads", type=int, default=d.threads)
    g.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds for a whole response (a server that trickles bytes is cut off)")
    g.add_argument("--retries", type=int, default=d.retries,
                   help="retries after 429, 5xx and connection errors, with backoff")
    add_flag(g, "--max-redirects", type=int, default=d.max_redirects)
    add_flag(g, "--max-download-mb", type=int,
             default=d.max_bytes // (1024 * 1024))
    add_flag(g, "--user-agent-token", default=d.user_agent_token,
             help="bot token in the User-Agent; X-Robots-Tag directives scoped to it apply")
    add_flag(g, "--disallowed-header-directives",
             default=",".join(d.disallowed_directives))
    add_flag(g, "--allow-network", default="", metavar="CIDR[,CIDR...]",
             help="let exactly these networks through the address policy, e.g. 127.0.0.1/32 "
                  "for a server on this machine; everything else is judged as usual")
    add_flag(g, "--allow-private-hosts", type=parse_flag, default=False,
             help="allow loopback/private/link-local targets (off: a crawler on a cloud "
                  "worker must not reach its metadata server)")
    g = parser.add_argument_group("politeness (per worker)")
    add_flag(g, "--max-per-host", type=int, default=d.max_per_host,
             help="requests in flight to one host at once")
    add_flag(g, "--cooldown-after", type=int, default=d.cooldown_after,
             help="429/503 answers in a row that pause a host")
    add_flag(g, "--host-cooldown", type=float, default=d.host_cooldown, metavar="SECONDS",
             help="how long a host is paused (its Retry-After lengthens it, up to 4 times)")
    add_flag(g, "--max-host-cooldowns", type=int, default=d.max_host_cooldowns,
             help="pauses a host gets; after that its remaining candidates fail as "
                  "host_backed_off")
    add_flag(g, "--robots-txt", type=parse_flag, default=d.robots_txt,
             help="read each origin's robots.txt (cached per worker) and skip what it "
                  "disallows for --user-agent-token")
    g = parser.add_argument_group("images")
    add_flag(g, "--image-size", type=int, default=d.image_size)
    add_flag(g, "--resize-mode", default=d.resize_mode, choices=RESIZE_MODES)
    add_flag(g, "--resize-only-if-bigger", type=parse_flag, default=False)
    add_flag(g, "--encode-quality", type=int, default=d.encode_quality)
    add_flag(g, "--min-image-size", type=int, default=d.min_image_size)
    add_flag(g, "--max-image-area", type=float, default=d.max_image_area)
    add_flag(g, "--max-aspect-ratio", type=float, default=d.max_aspect_ratio)
    add_hash_flags(g)
    add_dedup_flags(parser)
    g = parser.add_argument_group("shards")
    add_flag(g, "--samples-per-shard", type=int,
             default=ShardConfig.samples_per_shard,
             help="candidates per shard before download (img2dataset's convention)")


def add_hash_flags(group) -> None:
    d = DownloadConfig()
    add_flag(group, "--hash-kind", default=d.hash_kind, choices=HASH_KINDS,
             help="imagehash's perceptual hash of every image (near-duplicates compare these)")
    add_flag(group, "--hash-size", type=int, default=d.hash_size,
             help="hashes of SIZE x SIZE bits")
    add_flag(group, "--hash-views", type=int, default=d.hash_views, metavar="N",
             help="hashes per image: the whole picture, then N-1 centre crops 0.5%% a side "
                  "apart (two images match when any of their hashes are close, which finds "
                  "lightly cropped copies); 1: the whole picture only")


def add_dedup_flags(parser: argparse.ArgumentParser) -> None:
    c = DedupConfig()
    g = parser.add_argument_group("near-duplicates and evaluation images")
    add_flag(g, "--near-duplicate-distance", type=int, default=c.near_distance, metavar="BITS",
             help="images whose hashes differ in at most this many bits are one image (the "
                  "smallest key is kept); 0: identical hashes only")
    add_flag(g, "--near-duplicate-crops", type=parse_flag, default=c.near_crops,
             help="compare the hashes of corpus images' centre crops too, which finds "
                  "lightly cropped copies (evaluation images are always compared so); false: "
                  "whole pictures only, about ten times less work")
    add_flag(g, "--near-duplicate-colour-step", type=int, default=c.colour_step,
             metavar="LEVEL",
             help="two corpus images are one only if the mean L*a*b* (0-255) of each cell of "
                  "a 3x3 grid also agrees within one level of this step (a pHash reads "
                  "luminance patterns only); 0: hashes alone")
    add_flag(g, "--eval-distance", type=int, default=c.eval_distance, metavar="BITS",
             help="images within this many bits of an --exclude-images image are removed")
    add_flag(g, "--hot-bucket", type=int, default=c.hot_bucket,
             help="hashes sharing one band value compared directly; a bigger bucket is "
                  "sub-split on the bits its members differ in")
    g.add_argument("--exclude-images", nargs="+", default=[], metavar="PATH",
                   help="remove every image within --eval-distance of one of these: image "
                        "folders, WebDataset .tar shards (or folders of them), or a hash list "
                        "from `openwit hashes`")


def add_download_flags(parser: argparse.ArgumentParser) -> None:
    """`openwit download`'s flags: the curated folder, the cap, the download stage."""
    g = parser.add_argument_group("input and output")
    g.add_argument("--curated", default=None,
                   help="the output folder of `openwit curate`")
    add_output_flag(g, help="output folder (local or s3:// / gs://); may be --curated itself")
    g = parser.add_argument_group("cap")
    add_per_query_cap_flag(g, help="at most this many samples per query (default: the cap "
                                   "curation balanced for)")
    add_seed_flag(g)
    add_download_stage_flags(parser)


def image_half_config(args: argparse.Namespace, default_cap: int) -> ImageHalfConfig:
    """Parsed flags (of `add_download_flags`, or `openwit build`'s) -> ImageHalfConfig
    (validated); `default_cap` applies when --per-query-cap is not given."""
    if not args.output:
        raise ConfigError("--output is required")
    cap = default_cap if args.per_query_cap is None else args.per_query_cap
    config = ImageHalfConfig(
        cap=CapConfig(per_query_cap=cap, seed=args.seed),
        download=DownloadConfig(
            threads=args.download_threads,
            timeout=args.timeout,
            retries=args.retries,
            max_redirects=args.max_redirects,
            max_bytes=args.max_download_mb * 1024 * 1024,
            user_agent_token=args.user_agent_token,
            disallowed_directives=tuple(
                d.strip().lower() for d in args.disallowed_header_directives.split(",")
                if d.strip()
            ),
            allow_private_hosts=args.allow_private_hosts,
            allowed_networks=tuple(n.strip() for n in args.allow_network.split(",") if n.strip()),
            max_per_host=args.max_per_host,
            cooldown_after=args.cooldown_after,
            host_cooldown=args.host_cooldown,
            max_host_cooldowns=args.max_host_cooldowns,
            robots_txt=args.robots_txt,
            image_size=args.image_size,
            resize_mode=args.resize_mode,
            resize_only_if_bigger=args.resize_only_if_bigger,
            encode_quality=args.encode_quality,
            min_image_size=args.min_image_size,
            max_image_area=args.max_image_area,
            max_aspect_ratio=args.max_aspect_ratio,
            hash_kind=args.hash_kind,
            hash_size=args.hash_size,
            hash_views=args.hash_views,
        ),
        shards=ShardConfig(output=args.output.rstrip("/"),
                           samples_per_shard=args.samples_per_shard),
        dedup=DedupConfig(near_distance=args.near_duplicate_distance,
                          eval_distance=args.eval_distance,
                          hot_bucket=args.hot_bucket,
                          near_crops=args.near_duplicate_crops,
                          colour_step=args.near_duplicate_colour_step,
                          exclude_images=tuple(args.exclude_images)),
    )
    config.validate()
    return config
