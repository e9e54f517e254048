"""`openwit web`: generate the mini-web, write its files, and serve it on 127.0.0.1."""

from __future__ import annotations

import argparse

from openwit.pipeline.apps.miniweb import MiniWeb, WorldConfig, describe
from openwit.pipeline.apps.miniweb.world import MIN_SAMPLES
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import add_output_flag, add_seed_flag


def add_web_flags(parser: argparse.ArgumentParser) -> None:
    add_output_flag(parser, required=True, help="folder for the world's files")
    parser.add_argument("--samples", type=int, default=WorldConfig.samples)
    add_seed_flag(parser, help="seed of the world")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--hosts", type=int, default=WorldConfig.hosts,
                        help="serve from 127.0.0.1 and the next N-1 loopback addresses, rows "
                             "spread over them (a many-host list); crawl it with "
                             "--allow-network 127.0.0.0/24")
    parser.add_argument("--eval-per-class", type=int, default=WorldConfig.eval_images_per_class)
    parser.add_argument("--no-serve", action="store_true", help="write the files and exit")


def web_config(args: argparse.Namespace) -> WorldConfig:
    if args.samples < MIN_SAMPLES:
        raise ConfigError(f"--samples must be at least {MIN_SAMPLES} (one row of every kind)")
    if args.eval_per_class < 0:
        raise ConfigError("--eval-per-class must be at least 0")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be in [0, 65535]")
    if not 1 <= args.hosts <= 254:
        raise ConfigError("--hosts must be in [1, 254]")
    return WorldConfig(samples=args.samples, seed=args.seed, port=args.port, hosts=args.hosts,
                       eval_images_per_class=args.eval_per_class)


def start_web(config: WorldConfig, output: str) -> MiniWeb:
    """A running mini-web; a port in use or an unwritable folder is the user's to fix."""
    web = MiniWeb(config, output)
    try:
        return web.__enter__()
    except OSError as err:
        raise ConfigError(f"cannot write the mini-web to {output!r} or serve it on port "
                          f"{config.port} ({err}); --port 0 takes any free port") from err


def run_web(config: WorldConfig, output: str, serve: bool) -> int:
    web = start_web(config, output)
    try:
        print(describe(web))
        if serve:
            print("serving; Ctrl-C to stop", flush=True)
            web.serve_forever()
    finally:
        web.close()
    return 0
