"""`openwit candidates`: its config dataclass, its flags and the conversion between them."""

from __future__ import annotations

import argparse
import dataclasses

from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import add_flag, add_output_flag

MODES = ("wat", "warc")
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class CrawlConfig:
    """Which crawl files to read, how, and where the candidates go."""

    inputs: tuple[str, ...]  # paths or globs, local, s3:// or gs://
    mode: str = "wat"  # "wat": WAT metadata records; "warc": HTML of WARC response records
    output: str = "openwit-candidates"
    max_record_mb: int = 64  # a record over this is read past and counted, never held

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"the crawl mode must be one of {', '.join(MODES)}")
        if not self.inputs:
            raise ConfigError("give crawl files: --wat PATH or --warc PATH (repeat for several)")
        if self.max_record_mb < 1:
            raise ConfigError("--max-record-mb must be at least 1")

    @property
    def max_record_bytes(self) -> int:
        return self.max_record_mb * MIB


def add_crawl_input_flags(group, required: bool) -> None:
    """`--wat` / `--warc` (one of them), shared by `openwit candidates` and `openwit build`."""
    inputs = group.add_mutually_exclusive_group(required=required)
    inputs.add_argument("--wat", action="append", default=None, metavar="PATH",
                        help="Common Crawl WAT files (*.warc.wat.gz): path, glob, s3:// or "
                             "gs://; repeat for several")
    inputs.add_argument("--warc", action="append", default=None, metavar="PATH",
                        help="WARC files with HTML responses, for crawls without WAT files")
    add_flag(group, "--max-record-mb", type=int, default=CrawlConfig.max_record_mb,
             help="a WARC record larger than this is skipped and counted")


def add_candidates_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("crawl files")
    add_crawl_input_flags(group, required=True)
    add_output_flag(group, default=CrawlConfig.output,
                    help="folder (local, s3://, gs://) for candidates-*.parquet and stats.json")


def crawl_inputs(args) -> tuple[str, tuple[str, ...]] | None:
    """(mode, paths) of the --wat / --warc flags, or None when neither was given."""
    if args.wat:
        return "wat", tuple(args.wat)
    if args.warc:
        return "warc", tuple(args.warc)
    return None


def crawl_config(args, output: str | None = None) -> CrawlConfig:
    mode, inputs = crawl_inputs(args)
    return CrawlConfig(inputs=inputs, mode=mode, output=output or args.output,
                       max_record_mb=args.max_record_mb)
