"""Every public file and folder name, and every schema, that openwit writes or reads.

Three folders have a fixed shape, and each name below is defined here and nowhere else:

    corpus folder (`openwit build`, `openwit curate`, `openwit download`)
        shards/NNNNNN.tar              KEY.jpg, KEY.txt, KEY.json per sample
        shards/NNNNNN.parquet          SAMPLE_SCHEMA, one row per sample
        shards/NNNNNN_stats.json       the shard's plan and counts; its completion marker
        shards/sizes.json              {"NNNNNN.tar": samples}: open_clip's convention
        stats.json                     counts at every stage, drops by reason, config
        query_counts.parquet           CURATED_QUERY_COUNTS_SCHEMA after curate,
                                       CORPUS_QUERY_COUNTS_SCHEMA after download
        curated.parquet/part-*.parquet CURATED_SCHEMA (`openwit curate`)
        failures/text-STAGE-*.parquet  FAILURE_SCHEMA: every candidate dropped before download
        failures/shard-NNNNNN.parquet  FAILURE_SCHEMA: every candidate of the shard dropped later
        removed/NNNNNN.tar             KEY.jpg, KEY.json (its failure record) of the first
                                       REMOVED_EXAMPLES near or evaluation duplicates of the
                                       shard by key: what the report shows beside the kept image
                                       (not under failures/, which holds parquet only)
        _work/matched-*.parquet        MATCHED_SCHEMA; curation's spill, removed on success

    query table folder (`openwit queries`)
        queries.parquet                QUERY_TABLE_SCHEMA
        stats.json

    hash list (`openwit hashes`; read by --exclude-images)
        FILE.json                      {"format": HASH_LIST_FORMAT, "kind", "size",
                                        "hashes": [[[hash, ...], source]], "unreadable": [...]}

    candidates folder (`openwit candidates`; `openwit build --wat` writes it as OUTPUT/candidates)
        candidates-*.parquet           CRAWL_CANDIDATE_SCHEMA: one row per (url, alt) pair,
                                       what `--candidates` reads (url, caption columns)
        stats.json                     files, records, pages, image links, drops by reason

    run folder (`openwit train`, `openwit eval`)
        checkpoints/latest.pt          the checkpoint (a plain dict)
        tokenizer.json                 the tokenizer trained on the shards' captions
        metrics.jsonl                  one JSON object per logged step
        run.json                       the training config, the model config, the ranks
        eval.json                      `openwit eval`'s results
"""

from __future__ import annotations

import pyarrow as pa

from openwit.pipeline.core import storage

# ------------------------------------------------------------------------- corpus folder

SHARDS_FOLDER = "shards"
SIZES_FILE = "sizes.json"
STATS_FILE = "stats.json"
QUERY_COUNTS_FILE = "query_counts.parquet"
CURATED_FOLDER = "curated.parquet"
CURATED_PREFIX = "part"
FAILURES_FOLDER = "failures"
TEXT_FAILURES_PREFIX = "text"
SHARD_FAILURES_PREFIX = "shard"
WORK_FOLDER = "_work"
# Downloaded images wait here, one file per (shard, bundle), until their shard is written.
STAGED_FOLDER = "_staged"
MATCHED_PREFIX = "matched"
SHARD_NAME_DIGITS = 6
SHARD_STATS_SUFFIX = "_stats.json"
REMOVED_FOLDER = "removed"
REMOVED_EXAMPLES = 8  # per shard

SAMPLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("queries", pa.list_(pa.string())),
        ("language", pa.string()),
        ("language_prob", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("original_bytes", pa.int64()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        # The hashes of the picture's centre crops (image_hash: "views"), for near-duplicates.
        ("phash_crops", pa.list_(pa.string())),
        # The colour of each view, whole picture first (image_hash: ImageHasher.colours).
        ("colours", pa.list_(pa.string())),
    ]
)
SAMPLE_FIELDS = tuple(SAMPLE_SCHEMA.names)  # KEY.json holds exactly these

CURATED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("query_ids", pa.list_(pa.int32())),
        ("queries", pa.list_(pa.string())),
        ("keep_probability", pa.float64()),
        ("language", pa.string()),
        ("language_prob", pa.float64()),
    ]
)
MATCHED_SCHEMA = pa.schema(
    [("key", pa.string()), ("url", pa.string()), ("caption", pa.string()),
     ("row", pa.int64()), ("query_ids", pa.list_(pa.int32()))]
)
CURATED_QUERY_COUNTS_SCHEMA = pa.schema(
    [("query_id", pa.int32()), ("query", pa.string()), ("matched", pa.int64()),
     ("kept", pa.int64())]
)
# After download the same rows gain the samples written per query.
CORPUS_QUERY_COUNTS_SCHEMA = CURATED_QUERY_COUNTS_SCHEMA.append(pa.field("written", pa.int64()))

FAILURE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        # A sample dropped after download keeps its perceptual hash: a resumed run groups
        # near-duplicates with the dropped samples of completed shards, as the first run did.
        ("phash", pa.string()),
        ("phash_crops", pa.list_(pa.string())),
        ("colours", pa.list_(pa.string())),
    ]
)
FAILURE_FIELDS = tuple(FAILURE_SCHEMA.names)


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_NAME_DIGITS}d}"


def shard_paths(output: str, index: int) -> dict[str, str]:
    """The files of one shard in a corpus folder."""
    name = shard_name(index)
    folder = storage.join(output, SHARDS_FOLDER)
    return {
        "tar": storage.join(folder, f"{name}.tar"),
        "parquet": storage.join(folder, f"{name}.parquet"),
        "stats": storage.join(folder, f"{name}{SHARD_STATS_SUFFIX}"),
        "failures": storage.join(output, FAILURES_FOLDER,
                                 f"{SHARD_FAILURES_PREFIX}-{name}.parquet"),
        "removed": storage.join(output, REMOVED_FOLDER, f"{name}.tar"),
    }


def staged_path(output: str, index: int, attempt: str) -> str:
    """A tar of one bundle's downloaded images for shard `index` (`attempt`: unique)."""
    return storage.join(output, STAGED_FOLDER, f"{shard_name(index)}-{attempt}.tar")


def staged_pattern(output: str, index: int) -> str:
    return storage.join(output, STAGED_FOLDER, f"{shard_name(index)}-*.tar")


def sizes_path(shards_folder: str) -> str:
    return storage.join(shards_folder, SIZES_FILE)


HASH_LIST_FORMAT = "openwit-image-hashes/2"  # /2: several views per image

# --------------------------------------------------------------------- candidates folder

CANDIDATES_FOLDER = "candidates"  # inside a corpus folder built with `openwit build --wat`
CANDIDATES_PREFIX = "candidates"

CRAWL_CANDIDATE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # sample_key(url, caption): the key the corpus will give it
        ("url", pa.string()),  # absolute, normalised image URL
        ("caption", pa.string()),  # the alt text
        ("title", pa.string()),  # the <img title>, when present
        ("page_url", pa.string()),
        ("crawl_date", pa.string()),  # WARC-Date of the page's response record
        ("record_id", pa.string()),  # WARC-Record-ID of the page's response record
    ]
)


def candidates_pattern(folder: str) -> str:
    """What `--candidates` is given to read a candidates folder."""
    return storage.join(folder, f"{CANDIDATES_PREFIX}-*.parquet")


# --------------------------------------------------------------------- query table folder

QUERY_TABLE_FILE = "queries.parquet"
QUERY_TABLE_STATS_FILE = STATS_FILE
DEFAULT_QUERY_TABLE_FOLDER = "openwit-queries"

QUERY_TABLE_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("query", pa.string()),
        ("sources", pa.list_(pa.string())),
        ("count", pa.int64()),
        ("pmi", pa.float64()),
        ("views", pa.int64()),
        ("zipf", pa.float64()),
    ]
)

# ----------------------------------------------------------------------------- run folder

CHECKPOINTS_FOLDER = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"  # the run's settings as JSON, for readers that must not unpickle
TOKENIZER_FILE = "tokenizer.json"  # the trained tokenizer, beside the checkpoints
EVAL_FILE = "eval.json"
