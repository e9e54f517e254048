"""`openwit demo`: the whole path on this machine, with nothing from the internet.

    mini-web (generated, served on 127.0.0.1) -> openwit build -> openwit train (tiny, CPU)
    -> openwit eval (zero-shot on the held-out evaluation set, retrieval on a held-out shard,
    linear probe) -> openwit report

The evaluation set is rendered by the mini-web from item seeds disjoint from the corpus's (odd
seeds, where the corpus's are even), except the candidates it plants on purpose: re-encoded,
resized and cropped copies of evaluation images. The build gets the evaluation set as
`--exclude-images`, so those are removed by the check, and the demo says how many. The last
shard is held out of training for retrieval.

`openwit demo --ablation balance` trains the same model for the same number of samples on the
balanced corpus and on an unbalanced one of the same size drawn from the same pool, and
compares their zero-shot accuracy on the head and tail concepts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time

import argparse

import webdataset as wds
from apache_beam.options.pipeline_options import PipelineOptions

from openwit.model.evaluate import evaluate, format_results
from openwit.model.options import EvalConfig, TrainConfig
from openwit.model.train import format_run, train
from openwit.pipeline.apps.miniweb import WorldConfig, describe
from openwit.pipeline.apps.report import REPORT_FILE, ReportConfig, write_report as write_html
from openwit.pipeline.apps.miniweb.world import MIN_SAMPLES
from openwit.pipeline.apps.web import start_web
from openwit.pipeline.core import layout, storage
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import add_output_flag, add_seed_flag
from openwit.pipeline.core.records import stable_hash64
from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.jobs.build import add_build_flags, build, build_config
from openwit.pipeline.shards.summary import format_summary
from openwit.pipeline.shards.writer import encode_tar

QUICK_SAMPLES = 4000
DEFAULT_SAMPLES = 20000
CORPUS_FOLDER = "corpus"
POOL_FOLDER = "pool"  # the ablation's unbalanced pool: the same build without a per-query cap
UNBALANCED_FOLDER = "unbalanced"
RUN_FOLDER = "run"
DEMO_PORT = 8642  # fixed: URLs, hence sample keys and shards, are the same on every machine
ABLATION_FILE = "ablation.json"
ABLATIONS = ("balance",)
NO_CAP = 10**9


@dataclasses.dataclass(frozen=True)
class DemoTraining:
    """How the demo trains: sized so that the default demo and `--quick` finish in minutes on
    two CPU cores (the README gives the times measured).

    `tiny-resnet`, not `tiny`: at this scale the convolutional tower learns the mini-web's
    shapes faster per sample than the ViT, and runs faster on a CPU (the comparison is in
    benchmarks/RESULTS.md)."""

    model: str = "tiny-resnet"
    samples: int = 128_000  # samples seen in training (epochs x epoch samples)
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    workers: int = 2


QUICK_TRAINING = DemoTraining(samples=32_000)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    output: str = "openwit-demo"
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    port: int = 0
    per_query_cap: int | None = None
    download_timeout: float = 3.0  # the mini-web's slow responses take 30 s: cut them short
    training: DemoTraining = DemoTraining()
    train: bool = True
    ablation: str | None = None
    # The Beam flags the demo got (`--s3_endpoint_url` ...), for the trainer's and eval's
    # readers in their own processes; they may hold credentials.
    filesystem_flags: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def cap(self) -> int:
        # The mini-web's concepts are Zipf-distributed; a cap of a tenth of the pool trims the
        # head concepts and leaves the tail alone, as 20,000 does for the CLIP paper's 400M.
        return self.per_query_cap or max(1, self.samples // 10)

    @property
    def samples_per_shard(self) -> int:
        return max(100, self.samples // 8)


def add_demo_flags(parser: argparse.ArgumentParser) -> None:
    add_output_flag(parser, default=DemoConfig.output,
                    help="folder or bucket prefix (s3://, gs://) for everything; the mini-web "
                         "itself is always written to this machine's disk")
    parser.add_argument("--quick", action="store_true",
                        help="a small world and a short training")
    parser.add_argument("--samples", type=int, default=None, help="candidate rows in the world")
    add_seed_flag(parser)
    parser.add_argument("--port", type=int, default=DEMO_PORT,
                        help=f"mini-web port (default {DEMO_PORT}: URLs, hence sample keys and "
                             "shards, are the same on every machine; 0: any free port)")
    parser.add_argument("--per-query-cap", type=int, default=None,
                        help="default: a tenth of the candidates, so that balancing shows")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="samples seen in training (default 128,000; --quick 32,000)")
    parser.add_argument("--no-train", action="store_true", help="build the corpus only")
    parser.add_argument("--ablation", choices=ABLATIONS, default=None,
                        help="balance: also train on an unbalanced corpus of the same size from "
                             "the same pool and compare zero-shot accuracy on head and tail")


def demo_config(args: argparse.Namespace, filesystem_flags=()) -> DemoConfig:
    samples = args.samples if args.samples is not None else (
        QUICK_SAMPLES if args.quick else DEFAULT_SAMPLES)
    training = QUICK_TRAINING if args.quick else DemoTraining()
    if args.train_samples is not None:
        if args.train_samples < 1:
            raise ConfigError("--train-samples must be at least 1")
        training = dataclasses.replace(training, samples=args.train_samples)
    if samples < MIN_SAMPLES:
        raise ConfigError(f"--samples must be at least {MIN_SAMPLES} (one row of every kind)")
    if args.per_query_cap is not None and args.per_query_cap < 1:
        raise ConfigError("--per-query-cap must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be in [0, 65535]")
    return DemoConfig(output=args.output, samples=samples, seed=args.seed, port=args.port,
                      per_query_cap=args.per_query_cap, training=training,
                      train=not args.no_train, ablation=args.ablation,
                      filesystem_flags=tuple(filesystem_flags))


def build_argv(config: DemoConfig, web, output: str, cap: int) -> list[str]:
    return [
        "--candidates", str(web.candidates_path),
        "--queries", str(web.queries_path),
        "--output", output,
        "--per-query-cap", str(cap),
        "--samples-per-shard", str(config.samples_per_shard),
        "--seed", str(config.seed),
        "--timeout", str(config.download_timeout),
        # The mini-web lives on 127.0.0.1, which a crawler refuses by default: let exactly
        # that address through.
        "--allow-network", "127.0.0.1/32",
        # The per-host cap is politeness to other people's servers. The mini-web is the demo's
        # own, and one host: at the default of 4 connections the build waits on the cap, not
        # on work (2.2x slower on a 4,000-row world, benchmarks/RESULTS.md). Cool-downs after
        # its 429s still apply.
        "--max-per-host", str(DownloadConfig().threads),
        # A crawler should read robots.txt; the mini-web's disallows its /private/ folder.
        "--robots-txt", "true",
        # The zero-shot set is kept out of the corpus by the check, not only by its seeds.
        "--exclude-images", str(web.eval_dir),
    ]


def build_corpus(config: DemoConfig, web, output: str, cap: int,
                 options: PipelineOptions) -> dict:
    """`openwit build` with the demo's flags; `options` are the Beam options the demo got
    (they are not printed: they may hold credentials)."""
    argv = build_argv(config, web, output, cap)
    print("\nopenwit build " + " ".join(argv) + "\n", flush=True)
    parser = argparse.ArgumentParser(prog="openwit build")
    add_build_flags(parser)
    stats = build(build_config(parser.parse_args(argv)), options)
    print(format_summary(stats, output))
    return stats


def shard_files(shards_folder: str) -> list[str]:
    return storage.glob(storage.join(shards_folder, "*.tar"))


def webdataset_samples(tars: list[str]):
    """The samples of `tars` as webdataset groups them, each tar streamed through storage (so
    from a folder or a bucket alike; webdataset 0.2 cannot open s3:// itself)."""
    for url in tars:
        with storage.open_read(url) as stream:
            yield from wds.tariterators.group_by_keys(
                wds.tariterators.tar_file_expander([{"url": url, "stream": stream}]))


def read_back(shards_folder: str) -> tuple[int, dict | None]:
    """Reads every shard with webdataset, as a trainer would; returns (samples, first sample)."""
    count, first = 0, None
    for sample in webdataset_samples(shard_files(shards_folder)):
        if first is None:
            first = sample
        count += 1
    return count, first


def shard_sizes(shards_folder: str) -> dict[str, int]:
    return {name: n for name, n in sorted(storage.read_json(layout.sizes_path(shards_folder)).items())
            if n}


# ------------------------------------------------------------------------- train and eval


def train_demo_model(config: DemoConfig, shards: list[str], output: str) -> dict:
    sizes = shard_sizes(os.path.dirname(shards[0]))
    epoch_samples = sum(sizes[os.path.basename(path)] for path in shards)
    training = config.training
    # Epochs of the data the shards hold, enough of them to see `training.samples`.
    epochs = max(1, round(training.samples / max(epoch_samples, 1)))
    train_config = TrainConfig(
        shards="::".join(shards), output=output, model=training.model,
        batch_size=training.batch_size, epochs=epochs, epoch_samples=epoch_samples,
        lr=training.lr, warmup_steps=training.warmup_steps, workers=training.workers,
        seed=config.seed, checkpoint_every=10**9, log_every=10,
        filesystem_flags=config.filesystem_flags)
    print(f"\nopenwit train: {training.model} on {len(shards)} shards ({epoch_samples:,} "
          f"samples) for {epochs} epochs of batch {training.batch_size}", flush=True)
    run = train(train_config)
    print(format_run(run), flush=True)
    return run


def evaluate_run(config: DemoConfig, run_folder: str, eval_set: str,
                 retrieval_shards: str | None, linear_probe: bool = True) -> dict:
    results = evaluate(EvalConfig(
        checkpoint=run_folder, dataset=eval_set, retrieval_shards=retrieval_shards,
        linear_probe=linear_probe, seed=config.seed,
        output=storage.join(run_folder, layout.EVAL_FILE),
        filesystem_flags=config.filesystem_flags))
    print(format_results(results), flush=True)
    return results


def zero_shot_lines(results: dict) -> list[str]:
    zero_shot = results["zero_shot"]
    chance = zero_shot["chance"]
    lines = []
    for name, scores in zero_shot["by_templates"].items():
        templates = scores["templates"]
        lines.append(f"zero-shot top-1, {name} ({templates} template{'s' * (templates != 1)}): "
                     f"{scores['top1']:.1%}  ({scores['top1'] / chance:.1f}x chance of "
                     f"{chance:.1%}, {zero_shot['images']} held-out images, "
                     f"{len(zero_shot['classes'])} classes)")
    return lines


def write_report(corpus: str, run: str | None, ablation: str | None, output: str) -> str:
    return write_html(ReportConfig(corpus=corpus, run=run, ablation_json=ablation,
                                   output=output))


# ------------------------------------------------------------------------------- ablation


def subset_shards(source_folder: str, keys: set[str], output_folder: str,
                  samples_per_shard: int) -> int:
    """Copies the samples whose key is in `keys` into new shards, written by the pipeline's
    own shard writer (the same bytes for the same samples), with sizes.json; returns how many
    were copied."""
    sizes: dict[str, int] = {}
    pending: list[dict] = []

    def flush():
        name = f"{layout.shard_name(len(sizes))}.tar"
        storage.write_bytes_atomic(storage.join(output_folder, name), encode_tar(pending))
        sizes[name] = len(pending)
        pending.clear()

    for sample in webdataset_samples(shard_files(source_folder)):
        if sample["__key__"] not in keys:
            continue
        pending.append({**json.loads(sample["json"]), "jpg": sample["jpg"]})
        if len(pending) >= samples_per_shard:
            flush()
    if pending:
        flush()
    storage.write_json_atomic(layout.sizes_path(output_folder), sizes)
    return sum(sizes.values())


def draw_unbalanced(pool_shards: str, size: int, seed: int) -> set[str]:
    """`size` keys of the pool, uniformly at random (seeded by key): the pool's own skew."""
    keys = []
    for path in storage.glob(storage.join(pool_shards, "*.parquet")):
        keys += storage.read_parquet(path, columns=["key"]).column("key").to_pylist()
    keys.sort(key=lambda key: stable_hash64("unbalanced", str(seed), key))
    return set(keys[:size])


def head_and_tail(classes: list[str], pool_folder: str) -> tuple[list[str], list[str]]:
    """The eval classes split in two by how many pool candidates matched them."""
    matched = {row["query"]: row["matched"] for row in
               storage.read_parquet(storage.join(pool_folder, layout.QUERY_COUNTS_FILE)).to_pylist()}
    ordered = sorted(classes, key=lambda name: (-matched.get(name, 0), name))
    half = len(ordered) // 2
    return ordered[:half], ordered[half:]


def arm_summary(results: dict, head: list[str], tail: list[str], samples: int) -> dict:
    zero_shot = results["zero_shot"]
    scores = zero_shot["by_templates"].get("ensemble") or next(
        iter(zero_shot["by_templates"].values()))
    per_class = scores["per_class"]

    def mean(names):
        values = [per_class[n] for n in names if per_class.get(n) is not None]
        return round(sum(values) / len(values), 4) if values else None

    return {"top1": scores["top1"], "head_top1": mean(head), "tail_top1": mean(tail),
            "samples": samples, "chance": zero_shot["chance"]}


def run_ablation(config: DemoConfig, web, corpus_stats: dict, options: PipelineOptions) -> dict:
    """Balanced corpus vs an unbalanced corpus of the same size from the same pool."""
    output = config.output
    pool = storage.join(output, POOL_FOLDER)
    print("\n== ablation: the unbalanced pool (the same build without a per-query cap)",
          flush=True)
    build_corpus(config, web, pool, NO_CAP, options)
    balanced_shards = storage.join(output, CORPUS_FOLDER, layout.SHARDS_FOLDER)
    size = corpus_stats["written"]
    unbalanced_shards = storage.join(output, UNBALANCED_FOLDER, layout.SHARDS_FOLDER)
    pool_shards = storage.join(pool, layout.SHARDS_FOLDER)
    copied = subset_shards(pool_shards, draw_unbalanced(pool_shards, size, config.seed),
                           unbalanced_shards, config.samples_per_shard)
    print(f"unbalanced corpus: {copied:,} samples drawn uniformly from the pool's "
          f"{read_back(pool_shards)[0]:,} (balanced corpus: {size:,})")
    arms = {}
    eval_set = str(web.eval_dir)
    for arm, shards_folder in (("balanced", balanced_shards), ("unbalanced", unbalanced_shards)):
        print(f"\n== ablation arm: {arm}", flush=True)
        shards = shard_files(shards_folder)
        run_folder = storage.join(output, f"run-{arm}")
        train_demo_model(config, shards, run_folder)
        arms[arm] = evaluate_run(config, run_folder, eval_set, None, linear_probe=False)
    classes = arms["balanced"]["zero_shot"]["classes"]
    head, tail = head_and_tail(classes, pool)
    ablation = {
        "ablation": "balance",
        "arms": {arm: arm_summary(results, head, tail, size) for arm, results in arms.items()},
        "head_classes": head, "tail_classes": tail,
        "training": dataclasses.asdict(config.training),
    }
    storage.write_json_atomic(storage.join(output, ABLATION_FILE), ablation, sort_keys=False)
    return ablation


def format_ablation(ablation: dict) -> str:
    lines = ["", "ablation: balance (zero-shot top-1, ensemble templates)",
             f"{'arm':<12}{'samples':>9}{'all':>9}{'head':>9}{'tail':>9}"]
    for arm, summary in ablation["arms"].items():
        cells = [f"{summary[m]:.1%}" if summary[m] is not None else "-"
                 for m in ("top1", "head_top1", "tail_top1")]
        lines.append(f"{arm:<12}{summary['samples']:>9,}" + "".join(f"{c:>9}" for c in cells))
    lines.append(f"head classes: {', '.join(ablation['head_classes'])}")
    lines.append(f"tail classes: {', '.join(ablation['tail_classes'])}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the demo


def run_demo(config: DemoConfig, options: PipelineOptions) -> int:
    started = time.monotonic()
    world = WorldConfig(samples=config.samples, seed=config.seed, port=config.port)
    print(f"openwit demo: generating a mini-web of {config.samples:,} candidates...", flush=True)
    # The mini-web is served from files on this machine's disk; with a bucket as the output
    # it lives in a temporary folder that is removed when the demo ends.
    local = storage.is_local(config.output)
    web_folder = (os.path.join(config.output, "web") if local
                  else tempfile.mkdtemp(prefix="openwit-demo-web-"))
    try:
        return _run_on_web(config, options, start_web(world, web_folder), started)
    finally:
        if not local:
            shutil.rmtree(web_folder, ignore_errors=True)


def _run_on_web(config: DemoConfig, options: PipelineOptions, web, started: float) -> int:
    corpus = storage.join(config.output, CORPUS_FOLDER)
    ablation = None
    try:
        print(describe(web), flush=True)
        stats = build_corpus(config, web, corpus, config.cap, options)
        if config.ablation:
            ablation = run_ablation(config, web, stats, options)
    finally:
        web.close()

    shards_folder = storage.join(corpus, layout.SHARDS_FOLDER)
    count, first = read_back(shards_folder)
    print(f"\nread back {count:,} samples with webdataset from {shards_folder}")
    if first is not None:
        print(f"  e.g. {first['__key__']}: {first['txt'].decode('utf-8')!r} "
              f"({len(first['jpg']):,} bytes of JPEG)")
    ok = count == stats["written"] and not stats.get("accounting_problems")

    run_folder, results = None, None
    shards = shard_files(shards_folder)
    if config.train and len(shards) >= 2:
        run_folder = storage.join(config.output, RUN_FOLDER)
        train_demo_model(config, shards[:-1], run_folder)
        removed = stats.get("duplicates_removed", {}).get("eval_duplicate", 0)
        print(f"\nopenwit eval: zero-shot on {web.eval_dir} (rendered from seeds disjoint "
              f"from the corpus's; {removed:,} corpus images within the near-duplicate distance "
              f"of one were removed), retrieval on the held-out shard {shards[-1]}", flush=True)
        results = evaluate_run(config, run_folder, str(web.eval_dir), shards[-1])
    elif config.train:
        print("\nnot training: the corpus has fewer than two shards (one is held out)")
        ok = False

    ablation_file = storage.join(config.output, ABLATION_FILE) if ablation else None
    report = write_report(corpus, run_folder, ablation_file,
                          storage.join(config.output, REPORT_FILE))
    if ablation:
        print(format_ablation(ablation))
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; everything is in "
          f"{config.output}/; report: {report}")
    if results is not None:
        print("\n".join(zero_shot_lines(results)))
    return 0 if ok else 1
