"""The `openwit` command: curate, download, build, queries, train, eval, demo, web, report."""

from __future__ import annotations

import argparse
import logging
import os
import sys


BUILD_EPILOG = """\
Every Beam option passes through: --runner (default DirectRunner, in memory),
--direct_running_mode multi_processing --direct_num_workers 2, and Dataflow's --project,
--region, --temp_location, --setup_file, ...

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


def cmd_build(args, beam_args) -> int:
    from pipeline.build import run
    from pipeline.summary import format_summary

    # argparse parsed our flags for --help and early errors; Beam parses them again into
    # BuildOptions, so the same values travel with the pipeline options to every worker.
    stats = run(args.raw_argv)
    print(format_summary(stats, stats["config"]["shards"]["output"]))
    return 1 if stats.get("accounting_problems") else 0


def cmd_curate(args, beam_args) -> int:
    from pipeline.curate import format_curate_summary, run

    stats = run(args.raw_argv)
    print(format_curate_summary(stats))
    return 1 if stats.get("accounting_problems") else 0


def cmd_download(args, beam_args) -> int:
    from pipeline.build import run_download
    from pipeline.summary import format_summary

    stats = run_download(args.raw_argv)
    print(format_summary(stats, stats["config"]["shards"]["output"]))
    return 1 if stats.get("accounting_problems") else 0


def cmd_train(args, beam_args) -> int:
    from model.train import config_from_args, format_run, train

    config = config_from_args(args, beam_args)
    run = train(config)
    if run["rank"] == 0:
        print(format_run(run))
    return 0


def cmd_eval(args, beam_args) -> int:
    from model.evaluate import config_from_args, evaluate, format_results

    results = evaluate(config_from_args(args, beam_args))
    print(format_results(results))
    return 0


def cmd_queries(args, beam_args) -> int:
    from queries.build import format_stats, run

    stats = run(args.raw_argv)
    print(format_stats(stats, stats["config"]["table"]["output"]))
    return 0


def cmd_demo(args, beam_args) -> int:
    from pipeline.demo import DemoConfig, run_demo

    config = DemoConfig.from_args(args)
    return run_demo(config, beam_args)


def cmd_web(args, beam_args) -> int:
    from pipeline.miniweb import MiniWeb, WorldConfig, describe

    config = WorldConfig(samples=args.samples, seed=args.seed, port=args.port,
                         eval_images_per_class=args.eval_per_class)
    with MiniWeb(config, args.output) as web:
        print(describe(web))
        if args.no_serve:
            return 0
        print("serving; Ctrl-C to stop", flush=True)
        web.serve_forever()
    return 0


def cmd_report(args, beam_args) -> int:
    from pipeline.report import config_from_args, run_report

    if beam_args:  # Beam's filesystem flags (e.g. --s3_endpoint_url) for s3:// or gs:// inputs
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions

        from pipeline.config import reject_unknown_options

        options = PipelineOptions(beam_args)
        reject_unknown_options(options)
        FileSystems.set_options(options)
    path, seconds = run_report(config_from_args(args))
    print(f"report written to {path} in {seconds:.1f} s")
    return 0


DEMO_PORT = 8642


def make_parser() -> argparse.ArgumentParser:
    import functools

    from pipeline.config import CURATE_FLAGS, DOWNLOAD_FLAGS, add_build_arguments
    from queries.config import add_queries_arguments

    parser = argparse.ArgumentParser(
        prog="openwit",
        description="Build a WebImageText-style image-text corpus with Apache Beam.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    pipeline_commands = [
        ("curate", "candidate lists -> matched, balanced, language-filtered candidates",
         CURATE_EPILOG, functools.partial(add_build_arguments, sections=CURATE_FLAGS),
         cmd_curate),
        ("download", "curated candidates (`openwit curate`'s output) -> WebDataset shards",
         DOWNLOAD_EPILOG, functools.partial(add_build_arguments, sections=DOWNLOAD_FLAGS),
         cmd_download),
        ("build", "candidate URL/caption lists -> WebDataset shards (curate + download)",
         BUILD_EPILOG, add_build_arguments, cmd_build),
        ("queries", "build the concept query table (Wikipedia, WordNet, word frequencies)",
         QUERIES_EPILOG, add_queries_arguments, cmd_queries),
    ]
    for name, summary, epilog, add_arguments, handler in pipeline_commands:
        command = commands.add_parser(name, help=summary, epilog=epilog,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(command)
        command.set_defaults(handler=handler)

    demo = commands.add_parser(
        "demo", help="the whole path on the local mini-web: build, train tiny, eval, report"
    )
    demo.add_argument("--output", default="openwit-demo", help="folder for everything")
    demo.add_argument("--quick", action="store_true",
                      help="a small world and a short training (about a minute)")
    demo.add_argument("--samples", type=int, default=None, help="candidate rows in the world")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--port", type=int, default=DEMO_PORT,
                      help=f"mini-web port (default {DEMO_PORT}: URLs, hence sample keys and "
                           "shards, are the same on every machine; 0: any free port)")
    demo.add_argument("--per-query-cap", type=int, default=None,
                      help="default: a tenth of the candidates, so that balancing shows")
    demo.add_argument("--train-samples", type=int, default=None,
                      help="samples seen in training (default 128,000; --quick 32,000)")
    demo.add_argument("--no-train", action="store_true", help="build the corpus only")
    demo.add_argument("--ablation", choices=["balance"], default=None,
                      help="balance: also train on an unbalanced corpus of the same size from "
                           "the same pool and compare zero-shot accuracy on head and tail")
    demo.set_defaults(handler=cmd_demo)

    from model.cli_args import add_train_arguments

    train = commands.add_parser(
        "train", help="train a CLIP model on WebDataset shards (openwit's or img2dataset's)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(train)
    train.set_defaults(handler=cmd_train)

    from model.cli_args import add_eval_arguments

    evaluation = commands.add_parser(
        "eval", help="zero-shot, retrieval and linear-probe evaluation of a trained checkpoint")
    add_eval_arguments(evaluation)
    evaluation.set_defaults(handler=cmd_eval)

    web = commands.add_parser("web", help="generate the mini-web and serve it on 127.0.0.1")
    web.add_argument("--output", required=True, help="folder for the world's files")
    web.add_argument("--samples", type=int, default=20000)
    web.add_argument("--seed", type=int, default=0)
    web.add_argument("--port", type=int, default=0, help="0: a free port")
    web.add_argument("--eval-per-class", type=int, default=30)
    web.add_argument("--no-serve", action="store_true", help="write the files and exit")
    web.set_defaults(handler=cmd_web)

    from pipeline.report import add_report_arguments  # matplotlib is imported only to draw

    report = commands.add_parser(
        "report", help="one self-contained HTML page: corpus, training run, evaluation")
    add_report_arguments(report)
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    configure_logging("-v" in argv or "--verbose" in argv)
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    args.raw_argv = argv[argv.index(args.command) + 1:]
    from pipeline.config import ConfigError

    try:
        return args.handler(args, beam_args)
    except ConfigError as err:
        parser.exit(2, f"openwit {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
