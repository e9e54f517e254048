"""The `openwit` command: candidates, curate, download, build, hashes, queries, train, eval,
demo, web, report.

One route from a command line to a config: the command's own parser (its flags are defined
beside the conversion to its config dataclass, in the module named in its `*_flags` function
below) parses the line once; what it does not know must be Beam's (runner, filesystem
credentials and endpoints), and `core.beam.beam_options` checks that, so a misspelt flag stops
the command. A user's mistake ends as one line `openwit CMD: error: ...` and exit status 2.

Each command's modules are imported inside its two functions here, only when that command is
asked for: `openwit --help` and the corpus commands do not load torch, and the trainer does
not load the corpus stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Callable

from openwit.pipeline.core.errors import ConfigError


BUILD_EPILOG = """\
Every Beam option passes through: --runner (default DirectRunner, in memory),
--direct_running_mode multi_processing --direct_num_workers 2, and Dataflow's --project,
--region, --temp_location, --sdk_container_image, ... (infra/dataflow/launch.sh sets them).
--dry_run True with --runner DataflowRunner translates the graph, submits nothing and touches
no storage.

Output folder: shards/NNNNNN.tar (+ .parquet, _stats.json, sizes.json), stats.json,
query_counts.parquet, failures/*.parquet (every dropped candidate with its reason).
"""


CURATE_EPILOG = """\
Two passes over the candidate lists: pass 1 matches and counts per query; pass 2 matches again,
drops repeated URLs, keeps each candidate with MetaCLIP's probability
1 - prod(1 - min(1, cap x oversample / count)) (seeded by key), then identifies the language of
the survivors. Beam options pass through as for `openwit build`.

Output folder: curated.parquet/ (key, url, caption, query_ids, queries, keep_probability,
language, language_prob), query_counts.parquet (query_id, query, matched, kept), stats.json,
failures/*.parquet.
"""

DOWNLOAD_EPILOG = """\
Downloads what `openwit curate` kept, dedups the images, applies the exact per-query cap
(default: the cap curation balanced for) and writes the shards, as `openwit build` does.
--output may be the curated folder itself.
"""


QUERIES_EPILOG = """\
With no source flags: unigrams from the wordfreq package's English list (Zipf >= 1.4, about
100 occurrences in English Wikipedia) plus every WordNet lemma (when /usr/share/wordnet holds
WordNet). With --wikipedia-dump: the paper's recipe (unigrams, PMI bigrams, article titles,
filtered by --pageviews when given). Beam options pass through as for `openwit build`.

Output folder: queries.parquet (id, query, sources, count, pmi, views, zipf), stats.json.
"""


class _DropBeamImportNoise(logging.Filter):
    # Beam warns on import that optional GCP client libraries are absent; irrelevant offline.
    def filter(self, record):
        return "apitools not found" not in record.getMessage()


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropBeamImportNoise())
    logging.getLogger("openwit").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Beam logs every bundle at INFO; users want openwit's progress lines, not those.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


# ------------------------------------------------------------------- one pair per command


def beam_options(beam_args: list[str]):
    # Imported here, after logging is configured: importing Beam logs a warning about
    # optional GCP clients that `configure_logging` filters out.
    from openwit.pipeline.core.beam import beam_options as checked_options

    return checked_options(beam_args)


def told_dry_run(result) -> bool:
    """A dry run's result is the translated graph, not stats: its one line is printed."""
    from openwit.pipeline.core.beam import DryRun

    if isinstance(result, DryRun):
        print(result.summary())
        return True
    return False


def curate_flags(parser):
    from openwit.pipeline.text.config import add_curate_flags

    add_curate_flags(parser)


def run_curate(args, beam_args) -> int:
    from openwit.pipeline.jobs.curate import curate, format_curate_summary
    from openwit.pipeline.text.config import curate_config

    options = beam_options(beam_args)
    stats = curate(curate_config(args), options)
    if told_dry_run(stats):
        return 0
    print(format_curate_summary(stats))
    return 1 if stats.get("accounting_problems") else 0


def download_flags(parser):
    from openwit.pipeline.images.config import add_download_flags

    add_download_flags(parser)


def run_download(args, beam_args) -> int:
    from openwit.pipeline.jobs.download import download, download_job_config
    from openwit.pipeline.shards.summary import format_summary

    from openwit.pipeline.core.beam import is_dry_run

    options = beam_options(beam_args)
    config, curated = download_job_config(args, dry_run=is_dry_run(options))
    stats = download(config, curated, options)
    if told_dry_run(stats):
        return 0
    print(format_summary(stats, config.shards.output))
    return 1 if stats.get("accounting_problems") else 0


CANDIDATES_EPILOG = """\
Common Crawl: the crawl's WAT paths are listed in
https://data.commoncrawl.org/crawl-data/CC-MAIN-YYYY-WW/wat.paths.gz; the files are at
s3://commoncrawl/<path> (anonymous access inside AWS us-east-1) or
https://data.commoncrawl.org/<path>. Pass s3:// paths or globs with Beam's --s3_* flags, or a
downloaded copy's local paths.
"""


def candidates_flags(parser):
    from openwit.pipeline.crawl.config import add_candidates_flags

    add_candidates_flags(parser)


def run_candidates(args, beam_args) -> int:
    from openwit.pipeline.crawl.config import crawl_config
    from openwit.pipeline.jobs.candidates import extract_candidates, format_candidates_summary

    options = beam_options(beam_args)
    stats = extract_candidates(crawl_config(args), options)
    if told_dry_run(stats):
        return 0
    print(format_candidates_summary(stats))
    return 0


def build_flags(parser):
    from openwit.pipeline.jobs.build import add_build_flags

    add_build_flags(parser)


def run_build(args, beam_args) -> int:
    from openwit.pipeline.jobs.build import build, build_config
    from openwit.pipeline.shards.summary import format_summary

    options = beam_options(beam_args)
    config = build_config(args)
    stats = build(config, options)
    if told_dry_run(stats):
        return 0
    print(format_summary(stats, config.images.shards.output))
    return 1 if stats.get("accounting_problems") else 0


def queries_flags(parser):
    from openwit.queries.config import add_queries_flags

    add_queries_flags(parser)


def run_queries(args, beam_args) -> int:
    from openwit.queries.build import build_queries, format_stats
    from openwit.queries.config import QueriesConfig

    options = beam_options(beam_args)
    config = QueriesConfig.from_flags(args)
    stats = build_queries(config, options)
    if told_dry_run(stats):
        return 0
    print(format_stats(stats, config.table.output))
    return 0


def train_flags(parser):
    from openwit.model.options import add_train_flags

    add_train_flags(parser)


def run_train(args, beam_args) -> int:
    from openwit.model.options import train_config
    from openwit.model.train import format_run, train

    beam_options(beam_args)
    config = train_config(args, beam_args)
    run = train(config)
    if run["rank"] == 0:
        print(format_run(run))
    return 0


def eval_flags(parser):
    from openwit.model.options import add_eval_flags

    add_eval_flags(parser)


def run_eval(args, beam_args) -> int:
    from openwit.model.evaluate import evaluate, format_results
    from openwit.model.options import eval_config

    beam_options(beam_args)
    config = eval_config(args, beam_args)
    print(format_results(evaluate(config)))
    return 0


def demo_flags(parser):
    from openwit.pipeline.apps.demo import add_demo_flags

    add_demo_flags(parser)


def run_demo(args, beam_args) -> int:
    from openwit.pipeline.apps.demo import demo_config, run_demo as demo

    options = beam_options(beam_args)
    return demo(demo_config(args, beam_args), options)


def web_flags(parser):
    from openwit.pipeline.apps.web import add_web_flags

    add_web_flags(parser)


def run_web(args, beam_args) -> int:
    from openwit.pipeline.apps.web import run_web as web, web_config

    beam_options(beam_args)
    config = web_config(args)
    return web(config, args.output, serve=not args.no_serve)


def report_flags(parser):
    from openwit.pipeline.apps.report import add_report_flags

    add_report_flags(parser)


def run_report(args, beam_args) -> int:
    from openwit.pipeline.apps.report import report_config, run_report as report

    beam_options(beam_args)  # Beam's filesystem flags, for s3:// or gs:// inputs
    config = report_config(args)
    path, seconds = report(config)
    print(f"report written to {path} in {seconds:.1f} s")
    return 0


def hashes_flags(parser):
    from openwit.pipeline.images.eval_set import add_hashes_flags

    add_hashes_flags(parser)


def run_hashes(args, beam_args) -> int:
    from openwit.pipeline.images.eval_set import run_hashes as hashes

    if beam_args:
        raise ConfigError(f"unknown option(s): {' '.join(beam_args)}")
    return hashes(args)


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    summary: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, list[str]], int]
    epilog: str | None = None
    show_defaults: bool = False


COMMANDS = (
    Command("candidates", "Common Crawl WAT (or WARC) files -> image URL / alt-text candidates",
            candidates_flags, run_candidates, CANDIDATES_EPILOG),
    Command("curate", "candidate lists -> matched, balanced, language-filtered candidates",
            curate_flags, run_curate, CURATE_EPILOG),
    Command("download", "curated candidates (`openwit curate`'s output) -> WebDataset shards",
            download_flags, run_download, DOWNLOAD_EPILOG),
    Command("build", "candidate lists or crawl files -> WebDataset shards (curate + download)",
            build_flags, run_build, BUILD_EPILOG),
    Command("hashes", "perceptual hashes of an evaluation set, for --exclude-images",
            hashes_flags, run_hashes),
    Command("queries", "build the concept query table (Wikipedia, WordNet, word frequencies)",
            queries_flags, run_queries, QUERIES_EPILOG),
    Command("train", "train a CLIP model on WebDataset shards (openwit's or img2dataset's)",
            train_flags, run_train, show_defaults=True),
    Command("eval", "zero-shot, retrieval and linear-probe evaluation of a trained checkpoint",
            eval_flags, run_eval),
    Command("demo", "the whole path on the local mini-web: build, train, eval, report",
            demo_flags, run_demo),
    Command("web", "generate the mini-web and serve it on 127.0.0.1", web_flags, run_web),
    Command("report", "one self-contained HTML page: corpus, training run, evaluation",
            report_flags, run_report),
)


def make_parser(command: str | None) -> argparse.ArgumentParser:
    """The `openwit` parser; only `command`'s sub-parser gets its flags (and imports)."""
    parser = argparse.ArgumentParser(
        prog="openwit",
        description="Build a WebImageText-style image-text corpus with Apache Beam, and train "
                    "CLIP on it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in COMMANDS:
        formatter = (argparse.ArgumentDefaultsHelpFormatter if spec.show_defaults
                     else argparse.RawDescriptionHelpFormatter)
        sub = commands.add_parser(spec.name, help=spec.summary, description=spec.summary,
                                  epilog=spec.epilog, formatter_class=formatter,
                                  allow_abbrev=False)
        if spec.name == command:
            spec.add_flags(sub)
        sub.set_defaults(spec=spec)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    configure_logging("-v" in argv or "--verbose" in argv)
    names = {spec.name for spec in COMMANDS}
    command = next((arg for arg in argv if arg in names), None)
    parser = make_parser(command)
    args, beam_args = parser.parse_known_args(argv)
    try:
        return args.spec.run(args, beam_args)
    except ConfigError as err:
        parser.exit(2, f"openwit {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
