"""`openwit demo`: the whole path on this machine, with nothing from the internet.

Generates the mini-web (a world of rendered concepts, with the web's pathologies), serves it on
127.0.0.1, runs `openwit build` on its candidate list and reports what happened at each stage.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.build import build
from pipeline.config import BuildConfig, ConfigError
from pipeline.summary import format_summary

QUICK_SAMPLES = 1000
DEFAULT_SAMPLES = 20000


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    output: str = "openwit-demo"
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    port: int = 0
    per_query_cap: int | None = None
    download_timeout: float = 3.0  # the mini-web's slow responses take 30 s: cut them short

    @classmethod
    def from_args(cls, args) -> "DemoConfig":
        samples = args.samples or (QUICK_SAMPLES if args.quick else DEFAULT_SAMPLES)
        return cls(output=args.output, samples=samples, seed=args.seed, port=args.port,
                   per_query_cap=args.per_query_cap)

    @property
    def cap(self) -> int:
        # The mini-web's concepts are Zipf-distributed; a cap of a tenth of the pool trims the
        # head concepts and leaves the tail alone, as 20,000 does for the CLIP paper's 400M.
        return self.per_query_cap or max(1, self.samples // 10)

    @property
    def samples_per_shard(self) -> int:
        return max(100, self.samples // 8)


def build_argv(config: DemoConfig, web) -> list[str]:
    return [
        "--candidates", str(web.candidates_path),
        "--queries", str(web.queries_path),
        "--output", os.path.join(config.output, "corpus"),
        "--per-query-cap", str(config.cap),
        "--samples-per-shard", str(config.samples_per_shard),
        "--seed", str(config.seed),
        "--timeout", str(config.download_timeout),
        # The mini-web lives on 127.0.0.1, which a crawler refuses by default.
        "--allow-private-hosts", "true",
    ]


def read_back(shards_folder: str) -> tuple[int, dict | None]:
    """Reads every shard with webdataset, as a trainer would; returns (samples, first sample)."""
    import webdataset as wds

    tars = sorted(glob.glob(os.path.join(shards_folder, "*.tar")))
    if not tars:
        return 0, None
    count, first = 0, None
    for sample in wds.WebDataset(tars, shardshuffle=False):
        if first is None:
            first = sample
        count += 1
    return count, first


def run_demo(config: DemoConfig, beam_args: list[str]) -> int:
    from pipeline.miniweb import MiniWeb, WorldConfig, describe

    started = time.monotonic()
    world = WorldConfig(samples=config.samples, seed=config.seed, port=config.port)
    print(f"openwit demo: generating a mini-web of {config.samples:,} candidates...", flush=True)
    try:
        web = MiniWeb(world, os.path.join(config.output, "web")).__enter__()
    except OSError as err:
        raise ConfigError(f"cannot serve the mini-web on port {config.port} ({err}); "
                          "pass --port 0 for any free port") from err
    try:
        print(describe(web), flush=True)
        argv = build_argv(config, web) + list(beam_args)
        print("\nopenwit build " + " ".join(argv) + "\n", flush=True)
        options = PipelineOptions(argv)
        build_config = BuildConfig.from_options(options)
        stats = build(build_config, options)
    finally:
        web.close()

    print(format_summary(stats, build_config.fetch.shards.output))
    shards_folder = os.path.join(build_config.fetch.shards.output, "shards")
    count, first = read_back(shards_folder)
    print(f"\nread back {count:,} samples with webdataset from {shards_folder}")
    if first is not None:
        print(f"  e.g. {first['__key__']}: {first['txt'].decode('utf-8')!r} "
              f"({len(first['jpg']):,} bytes of JPEG)")
    print(f"demo finished in {time.monotonic() - started:.0f} s; everything is in "
          f"{config.output}/")
    ok = count == stats["written"] and not stats.get("accounting_problems")
    return 0 if ok else 1
