"""The capacity plan: what building an openwit corpus on Dataflow, and training ViT-B/32 on it,
costs in cores, hours, shuffle, storage, network and money, from figures that name their source.

    python infra/capacity.py                         # the tables in infra/CAPACITY.md
    python infra/capacity.py --pool 4e9 --corpus 4e8 --samples-per-shard 50000
    python infra/capacity.py --set fetch_success=0.5 --set vcpu_hour_usd=0.06
    python infra/capacity.py --sources               # every input, its value and its source

Every number the plan uses is a field of `Inputs`, and every field names where it comes from:
a heading of benchmarks/RESULTS.md and the figure read there (MEASURED), a constant of the
pipeline's code (CODE; the tests read it back from the source), or an ASSUMPTION with its
reason (and, where it leans on one, the heading it leans on). Figures measured once for this
plan, not yet a RESULTS.md entry, are assumptions that point at the section of
infra/CAPACITY.md that says how they were measured.

Standard library only, so it runs anywhere without the project installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

RESULTS = "benchmarks/RESULTS.md"
CAPACITY = "infra/CAPACITY.md"
MEASURED_HERE = "Measured for this plan"  # the section of CAPACITY.md with those measurements

# RESULTS.md headings the inputs cite (the tests check that each one is there).
H_CURATE = "## Curate: `openwit curate` on 1,000,000 candidates x 500,000 queries"
H_PHOTOS = ("## Download on photo-like JPEGs: `openwit download` vs img2dataset's `download()` "
            "(2026-12-02)")
H_POLITENESS = "## Download on a many-host list, with and without politeness (2026-12-01)"
H_VIEWS = "### The threshold behind `--near-duplicate-distance`"
H_NEAR_ONE_HASH = "### The stage's cost"
H_NEAR_DEFAULT = "### The stage's cost with colours and crop views (the new default)"
H_CRAWL = "## Candidates from WAT files: `openwit candidates` vs a warcio + json loop (2026-12-03)"
H_LOADER = "## Training input pipeline: openwit's loader vs open_clip's"
H_QUERY_TABLE = "## Query table: the Wikipedia path of `openwit queries`"
H_TRAIN = "## Training throughput: `tiny` on the CPU, real shards vs synthetic batches"

MEASURED, CODE, ASSUMPTION = "measured", "code", "assumption"
PRICES = ("Google Cloud list price, us-central1, as of 2025-06 (no network here to re-check: "
          "read cloud.google.com/dataflow/pricing and /storage/pricing before budgeting)")


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # MEASURED, CODE or ASSUMPTION
    document: str  # RESULTS or CAPACITY for a heading; a source file for CODE; "" for none
    where: str  # the heading, or the constant ("Class.field" or NAME) for CODE
    note: str  # the figure as read, or the reason


def measured(value, heading: str, figure: str):
    return dataclasses.field(default=value,
                             metadata={"source": Source(MEASURED, RESULTS, heading, figure)})


def in_code(value, path: str, name: str):
    return dataclasses.field(default=value, metadata={"source": Source(CODE, path, name, "")})


def assumed(value, reason: str, heading: str = "", document: str = RESULTS):
    return dataclasses.field(default=value, metadata={
        "source": Source(ASSUMPTION, document if heading else "", heading, reason)})


def measured_here(value, what: str):
    """Measured once for this plan (CAPACITY.md says how); an assumption until RESULTS.md
    has it."""
    return assumed(value, f"measured once for this plan: {what}", MEASURED_HERE, CAPACITY)


def source_of(field: dataclasses.Field) -> Source:
    return field.metadata["source"]


@dataclasses.dataclass(frozen=True)
class Inputs:
    # ---------------------------------------------------------------------------- the run
    pool_candidates: float = assumed(
        2e9, "the question asked: a 2B-candidate pool (URL + alt text rows)")
    corpus_pairs: float = assumed(4e8, "CLIP's WIT: 400M image-text pairs (shared/DESIGN.md)")
    queries: float = assumed(
        5e5, "the paper's ~500,000 queries; the curate benchmark ran with as many", H_CURATE)
    samples_per_shard: float = in_code(
        10_000, "pipeline/images/config.py", "ShardConfig.samples_per_shard")
    image_size: float = in_code(256, "pipeline/images/config.py", "DownloadConfig.image_size")
    download_threads: float = in_code(32, "pipeline/images/config.py", "DownloadConfig.threads")
    max_download_bytes: float = in_code(
        30 * 1024 * 1024, "pipeline/images/config.py", "DownloadConfig.max_bytes")
    max_image_area: float = in_code(
        89_478_485, "pipeline/images/config.py", "DownloadConfig.max_image_area")
    rows_per_part: float = in_code(20_000, "pipeline/text/parts.py", "ROWS_PER_PART")
    url_buckets: float = in_code(1024, "pipeline/text/url_dedup.py", "URL_BUCKETS")
    per_query_cap: float = in_code(20000, "pipeline/images/config.py", "CapConfig.per_query_cap")
    eval_images: float = assumed(
        5e4, "--exclude-images with an ImageNet-sized evaluation set (50,000 validation images)")

    # ------------------------------------------------ what survives each stage (real web)
    # Replace these with the shares in `stats.json` of a pilot build on a sample of the pool.
    read_keep: float = assumed(0.99, "malformed rows and non-http(s) URLs are rare in real lists")
    normalise_keep: float = assumed(
        0.95, "empty and over-long alt texts; crawl extraction already drops links without alt")
    match_keep: float = assumed(
        0.80, "500k queries hold every common English word, so nearly every English caption "
              "matches (98% of the benchmark's); file names and other scripts mostly do not",
        H_CURATE)
    url_duplicate_share: float = assumed(
        0.10, "one image URL linked from many pages with different alt texts; the benchmark's "
              "2% is a generator setting, not a web measurement", H_CURATE)
    language_keep: float = assumed(
        0.65, "English share of matched alt texts with --languages en; the queries are English, "
              "so matching already favours English captions")
    fetch_success: float = assumed(
        0.65, "URL lists rot: dead links, 403/404, hosts gone; the mini-web and the photo "
              "benchmark (97%) are no guide to the real web")
    identical_image_share: float = assumed(
        0.05, "the same bytes behind different URLs: CDN mirrors, re-posted files, placeholders")
    near_duplicate_share: float = assumed(
        0.10, "re-encoded, resized and lightly cropped copies among distinct images")
    over_cap_share: float = assumed(
        0.05, "--oversample 1.5 aims above the cap; download losses leave most queries below it")
    group_survivors_per_near_loser: float = assumed(
        0.5, "near-duplicate groups average three images: one survivor per two removed")
    placeholder_share: float = assumed(
        0.005, "the largest group of identical bytes, as a share of downloads (an 'image not "
               "found' picture many hosts return)")

    # --------------------------------------------------------------- the text half, per core
    curate_cpu_seconds: float = measured(
        81.8, H_CURATE, "1,000,000 candidates: 81.8 CPU s (median of 3)")
    curate_candidates: float = measured(1e6, H_CURATE, "the 1,000,000-candidate row")
    curate_language_cpu_seconds: float = measured(
        25.0, H_CURATE, "language identification on the 960,909 candidates balancing kept "
                        "costs ~25 s of the ~80")
    curate_language_captions: float = measured(960_909, H_CURATE, "960,909 candidates")
    curate_peak_rss_mib: float = measured(1128, H_CURATE, "peak RSS 1,128 MiB at 1,000,000")
    loser_lookup_ns_per_part: float = measured_here(
        270, "_CountInPartFn rebuilds the losers' list, arrow array and is_in set for every "
             "part: 251-288 ns per loser per part at 0.25-4M losers")
    crawl_pairs_per_core_second: float = measured(
        22_514, H_CRAWL, "`openwit candidates --wat FILE` whole job: 22,514 pairs/s/core")

    # -------------------------------------------------------- the image half, per image
    download_cpu_ms: float = measured(
        11.0, H_PHOTOS, "CPU ms / image 11.0: `openwit download`, 2 processes, 20,000 URLs")
    fetch_cpu_ms: float = measured(1.29, H_PHOTOS, "fetch (one HTTP request, body read) 1.29 ms")
    scheduling_cpu_ms: float = measured(
        2.7, H_PHOTOS, "startup, Beam and scheduling 2.7 ms with 2 processes at 20,000")
    all_views_hash_ms: float = measured(
        0.84, H_VIEWS, "all 12 views of a 256 px picture take 0.84 ms")
    whole_picture_hash_ms: float = measured(0.35, H_VIEWS, "the whole-picture hash alone 0.35 ms")
    colour_ms: float = assumed(
        0.2, "the 3 x 3 mean L*a*b* per view (added 2026-12-03, after the photo benchmark, "
             "which hashed whole pictures only): a colour conversion of a 256 px image")
    tls_cpu_ms: float = assumed(
        1.5, "real image URLs are mostly https and few images share a connection; the "
             "benchmarks fetched plain http on loopback")
    download_rss_mib: float = measured(
        826, H_PHOTOS, "peak RSS 826 MiB, `openwit download` in memory, 20,000 URLs")
    original_image_bytes: float = assumed(
        117_000, "real-web image bytes taken as the photo benchmark's median download (117 KB)",
        H_PHOTOS)
    jpeg_bytes_at_256: float = assumed(
        25_000, "a 256 px q95 photo JPEG: the photo benchmark's staged images were ~25 KB "
                "('a plain GroupByKey of 20,000 25 KB values'); grows with the pixel count",
        H_PHOTOS)
    fetch_seconds: float = assumed(
        1.5, "mean wall time of one fetch attempt on the real web (DNS, TCP, TLS, transfer; "
             "some attempts run into the 10 s timeout and the retries)")
    top_host_share: float = assumed(
        0.03, "the share of curated URLs on the largest single host (an image CDN)")
    top_host_requests_per_second: float = assumed(
        500, "what that host answers without 429s to one crawler; past it the per-host "
             "cool-downs slow every worker's queue for it", H_POLITENESS)
    exact_dedup_images_per_core_second: float = measured(
        2_555, H_NEAR_ONE_HASH,
        "one hash, 200,000 images: 2,555 images/s per core (used as the cost of the sha256 "
        "GroupByKey, each CoGroupByKey join and the exact cap: each shuffles fewer elements "
        "per image than that stage's two GroupByKeys)")
    near_dedup_images_per_core_second: float = measured(
        329, H_NEAR_DEFAULT, "12 views, colour step 4, 20,000 images: 329 images/s per core")
    candidates_per_bundle: float = assumed(
        10_000, "candidates one Dataflow bundle of the download stage holds (the runner "
                "chooses; this sets how many staged files a bundle writes)")
    gcs_request_seconds: float = assumed(
        0.05, "latency of one small GCS request (create, copy, read) from a worker")
    staged_requests_per_file: float = assumed(
        2, "storage.create_atomic on gs://: an upload to .inprogress, then a copy into place "
           "(README: Resume)")

    # ----------------------------------------------- element sizes (Beam's default coder)
    url_entry_bytes: float = assumed(
        32, "pipeline/text/url_dedup.py shuffles four int64 per matched candidate")
    loser_bytes: float = assumed(40, "(row, winner key) pairs: an int64 and 16 hex characters")
    count_bytes_per_query: float = assumed(
        8, "a count vector is int64 per query id; one per part (pass 2) and per bundle "
           "(kept counts), as an upper bound before combiner lifting sums them")
    curated_row_bytes: float = measured_here(283, "(shard, curated row), mini-web")
    sha_triple_bytes: float = measured_here(92, "(sha256, (key, shard, new))")
    light_sample_bytes: float = measured_here(1_592, "(key, light sample) of each _Without join")
    views_bytes_per_image: float = measured_here(
        1_722, "the identical-views GroupByKey's elements of one image (12 views)")
    bands_bytes_per_image: float = measured_here(
        16_703, "the band GroupByKey's elements of one image (12 views x 9 bands)")
    sample_metadata_bytes: float = measured_here(
        1_992, "(shard, sample metadata) into the shard writer's CoGroupByKey")
    download_failure_bytes: float = measured_here(871, "(shard, failure record) of a download")
    miniweb_url_and_caption_chars: float = measured_here(
        88, "mean URL (42) + caption (46) characters of the mini-web's written samples")
    url_and_caption_chars: float = assumed(
        160, "real alt-text rows: ~100-character URLs, ~60-character captions")

    # ------------------------------------------------------------------- bytes stored
    tar_overhead_bytes: float = measured_here(
        4_355, "per sample in a shard tar besides the JPEG: json 1,969, txt 46, headers, padding")
    shard_parquet_bytes: float = measured_here(443, "per sample in the shard's parquet")
    text_failure_bytes: float = measured_here(77, "per record in failures/text-*.parquet")
    shard_failure_bytes: float = measured_here(220, "per record in failures/shard-*.parquet")
    matched_row_bytes: float = assumed(
        120, "per row of _work/matched-*.parquet (zstd): key, row, URL, caption, query ids")
    staging_days: float = assumed(
        2, "how long the staged images and the work folder stay: until the build ends")

    # ------------------------------------------------------------ memory, per process
    automaton_mib: float = measured_here(286, "the word-mode automaton of 500,000 queries")
    query_strings_mib: float = measured_here(79, "the 500,000 query strings as loaded")
    img2dataset_import_mib: float = measured_here(
        224, "importing img2dataset's Resizer (the path of every image that is not a plain "
             "JPEG; the photo benchmark served JPEGs only)")
    language_identifier_mib: float = measured_here(
        166, "LanguageIdentifier built and used once (profiles, numba kernel)")
    loser_entry_bytes: float = measured_here(171, "one entry of the losers dict {row: key}")
    near_loser_entry_bytes: float = measured_here(
        187, "one entry of the near-duplicate roots {key: root} with the survivors' set")
    survivor_hashes_bytes: float = measured_here(
        1_816, "one entry of survivor_hashes {key: 12 hex hashes}")
    cap_count_entry_bytes: float = measured_here(86, "one entry of the cap's counts {query: n}")
    eval_index_bytes_per_image: float = measured_here(
        16_670, "EvalIndex (12 views, 17 bands) 14,852 + its side input list 1,818 per image")
    sha_member_bytes: float = assumed(
        160, "one (key, shard, new) member of a sha256 group as Python objects: a 16-hex str, "
             "a tuple, an int (estimated from CPython's object sizes, not measured)")
    top_entry_bytes: float = measured_here(205, "one priority in a Top.SmallestPerKey heap")
    shard_stats_query_bytes: float = measured_here(
        66, "one query of a shard's stats 'queries' dict")
    sample_dict_bytes: float = measured_here(5_279, "one sample's metadata dict in the writer")
    failure_dict_bytes: float = measured_here(2_475, "one failure record dict in the writer")
    queries_per_sample: float = measured_here(4.57, "matched queries per written sample")
    query_table_row_bytes: float = measured(
        1_500, H_QUERY_TABLE, "~1.5 KB of peak memory per row on the in-memory runner")
    worker_overhead_gib: float = assumed(
        1.0, "Dataflow's OOM guide: the worker's own processes use up to about 1 GB per VM")
    vcpus_per_vm: float = assumed(4, "n2-*-4 workers: small VMs autoscale finely")
    sdk_processes_per_vcpu: float = assumed(
        1, "Dataflow starts one Python SDK process per worker vCPU, and each process holds its "
           "own copy of every side input (Dataflow's guide to out-of-memory errors); "
           "--experiments=no_use_multiple_sdk_containers makes it one per VM")

    # ------------------------------------------------------------ the fleet and prices
    fleet_vcpus: float = assumed(1_000, "a regional vCPU quota a project can get raised to")
    cpu_utilisation: float = assumed(
        0.75, "billed vCPU time that does work: start-up, autoscaling, stragglers")
    vcpu_hour_usd: float = assumed(0.056, f"Dataflow batch vCPU-hour: {PRICES}")
    memory_gib_hour_usd: float = assumed(0.003557, f"Dataflow batch GB-hour: {PRICES}")
    disk_gib_hour_usd: float = assumed(0.000054, f"Dataflow standard PD GB-hour: {PRICES}")
    boot_disk_gib: float = assumed(25, "Dataflow's default batch boot disk")
    shuffle_gib_usd: float = assumed(
        0.011, f"Dataflow Shuffle, batch, per GB processed, without tier discounts: {PRICES}")
    storage_gib_month_usd: float = assumed(0.020, f"GCS Standard, regional: {PRICES}")
    class_a_per_1000_usd: float = assumed(0.005, f"GCS writes, copies, lists: {PRICES}")
    class_b_per_1000_usd: float = assumed(0.0004, f"GCS reads: {PRICES}")
    nat_gib_usd: float = assumed(
        0.045, f"Cloud NAT data processing (workers without external IPs): {PRICES}")

    # ------------------------------------------------------------------ training
    samples_seen: float = assumed(
        12.8e9, "CLIP trained 32 epochs over 400M pairs: 12.8B samples seen")
    vit_b32_flops_per_sample: float = measured_here(
        43.4e9, "FlopCounterMode over one ViT-B/32 training step, 43.4 GFLOP per sample")
    gpu_peak_flops: float = assumed(312e12, "A100's dense bf16 peak")
    gpu_mfu: float = assumed(
        0.30, "ViT-B/32 has never run on a GPU here: replace with `bench_train.py --model "
              "vit-b-32 --batch-size 256 --precision bf16` on one", H_TRAIN)
    gpu_hour_usd: float = assumed(3.67, f"a2-highgpu-1g (one A100 40GB) on demand: {PRICES}")
    loader_images_per_second: float = measured(
        1_281, H_LOADER, "openwit CPU loader 1,281 images/s with 2 workers on 2 cores")
    loader_cores: float = measured(2, H_LOADER, "2 workers, the 2-core VM")


# ------------------------------------------------------------------------------ the plan

GB = 1e9
GIB = 2**30
MIB = 2**20
HOUR = 3600.0
TAR_MEMBER_OVERHEAD = 512 + 256  # a tar header, and half a 512-byte block of padding on average
SHARD_FILES = 5  # tar, parquet, stats, failures, removed examples: each one atomic write


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    elements_in: float
    elements_out: float
    core_hours: float  # CPU work, at the measured per-core rates
    vcpu_hours: float  # billed: CPU work over utilisation, or time blocked on the network
    shuffled: float = 0.0  # bytes through GroupByKey / CoGroupByKey / Combine
    stored: float = 0.0  # bytes kept in the output
    transient: float = 0.0  # bytes stored while the build runs, deleted at its end
    network_in: float = 0.0  # bytes fetched from the web
    half: str = "text"  # which job: "text" (openwit curate) or "image" (openwit download)
    bound: str = "CPU"


@dataclasses.dataclass(frozen=True)
class Flow:
    """Element counts through the stages."""
    pool: float
    parsed: float
    normalised: float
    matched: float
    url_losers: float
    deduplicated: float
    balance_keep: float
    balanced: float
    curated: float
    downloaded: float
    failed: float
    distinct: float
    near_losers: float
    unique: float
    written: float
    parts: float
    shards: float
    staged_files: float


def flow(i: Inputs, fixed: bool = False) -> Flow:
    """`fixed`: as if each bundle staged its images in one file (see CAPACITY.md, Risks)."""
    parsed = i.pool_candidates * i.read_keep
    normalised = parsed * i.normalise_keep
    matched = normalised * i.match_keep
    url_losers = matched * i.url_duplicate_share
    deduplicated = matched - url_losers
    # Balancing is the one free share: it must keep what the corpus needs after every later
    # loss (a share over 1 means the pool is too small for the corpus).
    after_balance = (i.language_keep * i.fetch_success * (1 - i.identical_image_share)
                     * (1 - i.near_duplicate_share) * (1 - i.over_cap_share))
    balance_keep = i.corpus_pairs / (deduplicated * after_balance)
    balanced = deduplicated * balance_keep
    curated = balanced * i.language_keep
    downloaded = curated * i.fetch_success
    distinct = downloaded * (1 - i.identical_image_share)
    near_losers = distinct * i.near_duplicate_share
    unique = distinct - near_losers
    written = unique * (1 - i.over_cap_share)
    shards = math.ceil(curated / i.samples_per_shard)
    # StageImages writes one file per (shard, bundle); a bundle's images fall in shards at
    # random (shard = hash(key) mod shards), so it touches about this many of them.
    images_per_bundle = i.candidates_per_bundle * i.fetch_success
    bundles = downloaded / images_per_bundle
    files_per_bundle = 1.0 if fixed else shards * -math.expm1(-images_per_bundle / shards)
    return Flow(i.pool_candidates, parsed, normalised, matched, url_losers, deduplicated,
                balance_keep, balanced, curated, downloaded, curated - downloaded, distinct,
                near_losers, unique, written, matched / i.rows_per_part, shards,
                bundles * files_per_bundle)


def jpeg_bytes(i: Inputs) -> float:
    """A stored JPEG grows with its pixel count (an assumption of the same bytes per pixel)."""
    return i.jpeg_bytes_at_256 * (i.image_size / 256) ** 2


def row_text_delta(i: Inputs) -> float:
    """Bytes a real row's URL and caption add over the mini-web's, in records that carry them."""
    return i.url_and_caption_chars - i.miniweb_url_and_caption_chars


def stages(i: Inputs, fixed: bool = False) -> list[Stage]:
    """`fixed`: as if the risks in CAPACITY.md were fixed (no per-part rebuild of the losers,
    one staged file per bundle)."""
    f = flow(i, fixed)
    text_cpu_per_candidate = ((i.curate_cpu_seconds - i.curate_language_cpu_seconds)
                              / i.curate_candidates)
    language_cpu_per_caption = i.curate_language_cpu_seconds / i.curate_language_captions
    text_core_h = f.pool * text_cpu_per_candidate / HOUR
    language_core_h = f.balanced * language_cpu_per_caption / HOUR
    rebuild_core_h = 0.0 if fixed else (f.parts * f.url_losers * i.loser_lookup_ns_per_part
                                        * 1e-9 / HOUR)

    views_extra_ms = i.all_views_hash_ms - i.whole_picture_hash_ms + i.colour_ms
    ok_ms = i.download_cpu_ms + views_extra_ms + i.tls_cpu_ms
    failed_ms = i.fetch_cpu_ms + i.scheduling_cpu_ms + i.tls_cpu_ms
    download_core_h = (f.downloaded * ok_ms + f.failed * failed_ms) / 1000 / HOUR
    # Each SDK process keeps `download_threads` fetches going; a vCPU is billed while they wait.
    download_waiting_h = (f.curated * i.fetch_seconds
                          / (i.download_threads * i.sdk_processes_per_vcpu) / HOUR)
    staging_h = f.staged_files * i.staged_requests_per_file * i.gcs_request_seconds / HOUR
    writer_h = ((f.staged_files + f.shards * SHARD_FILES * i.staged_requests_per_file)
                * i.gcs_request_seconds / HOUR)
    staged_jpeg = jpeg_bytes(i) + TAR_MEMBER_OVERHEAD
    identical_core_h = f.downloaded / i.exact_dedup_images_per_core_second / HOUR
    near_core_h = f.distinct / i.near_dedup_images_per_core_second / HOUR
    cap_core_h = f.unique / i.exact_dedup_images_per_core_second / HOUR

    def billed(core_h):
        return core_h / i.cpu_utilisation

    delta = row_text_delta(i)
    return [
        Stage("read, normalise, match, URL dedup, balance", f.pool, f.balanced, text_core_h,
              billed(text_core_h),
              shuffled=(f.matched * i.url_entry_bytes + f.url_losers * i.loser_bytes
                        + 2 * f.parts * i.queries * i.count_bytes_per_query),
              stored=(f.pool - f.curated) * i.text_failure_bytes,
              transient=f.matched * i.matched_row_bytes),
        Stage("language", f.balanced, f.curated, language_core_h, billed(language_core_h)),
        Stage("pass 2: losers rebuilt per part", f.parts, f.parts, rebuild_core_h,
              billed(rebuild_core_h), bound="CPU, grows with pool squared"),
        Stage("download, check, resize, hash", f.curated, f.downloaded, download_core_h,
              max(billed(download_core_h), download_waiting_h),
              shuffled=f.curated * (i.curated_row_bytes + delta),
              network_in=f.downloaded * i.original_image_bytes, half="image",
              bound=("fetch latency" if download_waiting_h > billed(download_core_h)
                     else "CPU")),
        Stage("stage images (a file per shard and bundle)", f.downloaded, f.staged_files, 0.0,
              staging_h, transient=f.downloaded * staged_jpeg, half="image",
              bound="GCS requests"),
        Stage("identical images (sha256)", f.downloaded, f.distinct, identical_core_h,
              billed(identical_core_h),
              shuffled=f.downloaded * (i.sha_triple_bytes + i.light_sample_bytes), half="image"),
        Stage("near-duplicates, evaluation copies", f.distinct, f.unique, near_core_h,
              billed(near_core_h),
              shuffled=f.distinct * (i.views_bytes_per_image + i.bands_bytes_per_image),
              half="image"),
        Stage("exact per-query cap", f.unique, f.written, cap_core_h, billed(cap_core_h),
              shuffled=f.unique * i.light_sample_bytes, half="image"),
        Stage("write shards", f.written, f.shards, 0.0, writer_h,
              shuffled=(f.downloaded * (i.sample_metadata_bytes + delta)
                        + f.failed * (i.download_failure_bytes + delta)),
              stored=(f.written * (jpeg_bytes(i) + i.tar_overhead_bytes + i.shard_parquet_bytes)
                      + (f.curated - f.written) * i.shard_failure_bytes),
              half="image", bound="GCS requests"),
    ]


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes one SDK process (Dataflow runs one per vCPU) or one key's group holds."""
    text_process: float
    download_process: float
    near_losers_process: float
    shard_group: float
    writer_process: float
    groups_worker: float
    summary_worker: float
    losers_side_input: float
    roots_side_input: float
    survivor_hashes_side_input: float
    eval_index: float
    in_flight_bodies: float
    in_flight_bodies_worst: float
    decodes_worst: float
    staged_per_bundle: float
    url_bucket: float
    placeholder_group: float
    cap_heap: float

    def text_per_vcpu(self, i: Inputs) -> float:
        return (self.text_process * i.sdk_processes_per_vcpu
                + i.worker_overhead_gib * GIB / i.vcpus_per_vm)

    def image_per_vcpu(self, i: Inputs) -> float:
        busiest = max(self.download_process, self.near_losers_process, self.writer_process)
        return busiest * i.sdk_processes_per_vcpu + i.worker_overhead_gib * GIB / i.vcpus_per_vm


def shard_group_bytes(i: Inputs, f: Flow, samples_per_shard: float) -> float:
    """One shard's CoGroupByKey group as the writer holds it: every downloaded sample's
    metadata, every failure, and the written samples' JPEGs read back from _staged/."""
    downloaded = samples_per_shard * f.downloaded / f.curated
    written = samples_per_shard * f.written / f.curated
    failed = samples_per_shard - downloaded
    return (downloaded * i.sample_dict_bytes + failed * i.failure_dict_bytes
            + written * jpeg_bytes(i))


def memory(i: Inputs, fixed: bool = False) -> Memory:
    """`fixed`: as if the side inputs that grow with the data were joins instead."""
    f = flow(i, fixed)
    base_text = i.curate_peak_rss_mib * MIB
    losers = 0.0 if fixed else f.url_losers * i.loser_entry_bytes
    # The count vector (int64) and BalanceStep's Python list of it (a pointer and an int each).
    counts = i.queries * (8 + 36)
    base_image = i.download_rss_mib * MIB
    resizer = i.img2dataset_import_mib * MIB
    bodies = i.download_threads * i.original_image_bytes
    # Up to 2 x threads fetches are in flight or done and not yet collected, each with its body.
    bodies_worst = 2 * i.download_threads * i.max_download_bytes
    # Each process decodes as many images at once as os.cpu_count(), the VM's vCPUs; near the
    # area limit Pillow's RGBA decode holds 4 bytes a pixel.
    decodes_worst = i.vcpus_per_vm * i.max_image_area * 4
    staged = i.candidates_per_bundle * i.fetch_success * jpeg_bytes(i)
    group_survivors = f.near_losers * i.group_survivors_per_near_loser
    roots = 0.0 if fixed else f.near_losers * i.near_loser_entry_bytes
    survivor_hashes = 0.0 if fixed else group_survivors * i.survivor_hashes_bytes
    cap_counts = i.queries * i.cap_count_entry_bytes
    eval_index = i.eval_images * i.eval_index_bytes_per_image
    shard_group = shard_group_bytes(i, f, i.samples_per_shard)
    return Memory(
        text_process=base_text + losers + counts,
        download_process=base_image + resizer + bodies + staged + eval_index,
        near_losers_process=base_image + roots + survivor_hashes + cap_counts,
        shard_group=shard_group,
        writer_process=base_image + shard_group,
        groups_worker=(f.near_losers + group_survivors) * i.near_loser_entry_bytes,
        summary_worker=f.written * i.queries_per_sample * i.shard_stats_query_bytes,
        losers_side_input=losers,
        roots_side_input=roots,
        survivor_hashes_side_input=survivor_hashes,
        eval_index=eval_index,
        in_flight_bodies=bodies,
        in_flight_bodies_worst=bodies_worst,
        decodes_worst=decodes_worst,
        staged_per_bundle=staged,
        url_bucket=f.matched / i.url_buckets * i.url_entry_bytes,
        placeholder_group=f.downloaded * i.placeholder_share * i.sha_member_bytes,
        cap_heap=i.per_query_cap * i.top_entry_bytes,
    )


def machine_for(bytes_per_vcpu: float) -> tuple[str, float]:
    """The smallest n2 family (4 vCPUs) whose memory per vCPU holds this: (name, GiB/vCPU)."""
    need = bytes_per_vcpu / GIB
    if need <= 4:
        return "n2-standard-4", 4.0
    if need <= 8:
        return "n2-highmem-4", 8.0
    per_vcpu = math.ceil(need)
    return f"n2-custom-4-{per_vcpu * 4 * 1024}-ext", float(per_vcpu)


@dataclasses.dataclass(frozen=True)
class Totals:
    core_hours: float
    vcpu_hours: float
    vcpu_hours_by_half: dict
    gib_per_vcpu_by_half: dict
    shuffled: float
    stored: float
    transient: float
    network_in: float
    class_a: float
    class_b: float
    wall_hours: dict  # stage -> hours on the fleet
    politeness_hours: float
    costs: dict  # item -> USD
    gpu_hours: float
    loader_cores_per_gpu: float


def totals(i: Inputs, fixed: bool = False) -> Totals:
    f, parts, mem = flow(i, fixed), stages(i, fixed), memory(i, fixed)
    by_half = {half: sum(s.vcpu_hours for s in parts if s.half == half)
               for half in ("text", "image")}
    gib_per_vcpu = {"text": machine_for(mem.text_per_vcpu(i))[1],
                    "image": machine_for(mem.image_per_vcpu(i))[1]}
    vcpu_hours = sum(by_half.values())
    shuffled = sum(s.shuffled for s in parts)
    stored = sum(s.stored for s in parts)
    transient = sum(s.transient for s in parts)
    network_in = sum(s.network_in for s in parts)
    class_a = (f.staged_files * i.staged_requests_per_file
               + f.shards * (SHARD_FILES * i.staged_requests_per_file + 1))  # +1: the glob
    class_b = f.staged_files
    politeness_hours = i.top_host_share * f.curated / i.top_host_requests_per_second / HOUR
    wall = {s.name: s.vcpu_hours / i.fleet_vcpus for s in parts}
    download = "download, check, resize, hash"
    wall[download] = max(wall[download], politeness_hours)
    gpu_samples_per_second = i.gpu_peak_flops * i.gpu_mfu / i.vit_b32_flops_per_sample
    gpu_hours = i.samples_seen / gpu_samples_per_second / HOUR
    loader_per_core = i.loader_images_per_second / i.loader_cores
    vm_hours = vcpu_hours / i.vcpus_per_vm
    costs = {
        "Dataflow vCPU": vcpu_hours * i.vcpu_hour_usd,
        "Dataflow memory": sum(by_half[h] * gib_per_vcpu[h] for h in by_half)
        * i.memory_gib_hour_usd,
        "Dataflow boot disks": vm_hours * i.boot_disk_gib * i.disk_gib_hour_usd,
        "Dataflow Shuffle": shuffled / GB * i.shuffle_gib_usd,
        "Cloud NAT (fetched bytes)": network_in / GB * i.nat_gib_usd,
        "GCS operations": (class_a / 1000 * i.class_a_per_1000_usd
                           + class_b / 1000 * i.class_b_per_1000_usd),
        "GCS storage, first month": (stored + transient * i.staging_days / 30) / GB
        * i.storage_gib_month_usd,
        "training ViT-B/32 (GPU)": gpu_hours * i.gpu_hour_usd,
    }
    return Totals(sum(s.core_hours for s in parts), vcpu_hours, by_half, gib_per_vcpu,
                  shuffled, stored, transient, network_in, class_a, class_b, wall,
                  politeness_hours, costs, gpu_hours, gpu_samples_per_second / loader_per_core)


# ------------------------------------------------------------------------------ printing


def count(n: float) -> str:
    for unit, suffix in ((1e9, "bn"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= unit:
            return f"{n / unit:.3g} {suffix}"
    return f"{n:.3g}"


def size(n: float) -> str:
    if not n:
        return "-"
    for unit, suffix in ((1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= unit:
            return f"{n / unit:.3g} {suffix}"
    return f"{n:.0f} B"


def gib(n: float) -> str:
    if not n:
        return "-"
    return f"{n / GIB:.3g} GiB" if n >= GIB else f"{n / MIB:.3g} MiB"


def hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def usd(x: float) -> str:
    return f"${x:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_stages(i: Inputs) -> list[str]:
    f, parts, t = flow(i), stages(i), totals(i)
    rows = [[s.name, count(s.elements_in), count(s.elements_out), hours(s.core_hours),
             hours(s.vcpu_hours), s.bound, size(s.shuffled), size(s.stored + s.transient),
             size(s.network_in)] for s in parts]
    rows.append(["**total**", count(f.pool), count(f.written), hours(t.core_hours),
                 hours(t.vcpu_hours), "", size(t.shuffled), size(t.stored + t.transient),
                 size(t.network_in)])
    out = ["**Stages** (in and out: elements; stored: kept and transient bytes)", ""]
    out += table(["stage", "in", "out", "core-hours", "billed vCPU-hours", "bound by",
                  "shuffled", "stored", "fetched"], rows)
    out += ["", f"Kept: the corpus and failure records, {size(t.stored)}. Transient: the staged "
            f"images and the work folder, {size(t.transient)} at their peak. {count(f.shards)} "
            f"shards; {count(f.staged_files)} staged files "
            f"({f.downloaded / f.staged_files:.3g} images each); GCS requests "
            f"{count(t.class_a)} class A, {count(t.class_b)} class B.", ""]
    return out


def render_wall_clock(i: Inputs) -> list[str]:
    f, now, fixed = flow(i), totals(i), totals(i, fixed=True)
    rows = []
    for name, h in now.wall_hours.items():
        marks = [label for label, t in (("as the code stands", now), ("risks fixed", fixed))
                 if name == max(t.wall_hours, key=t.wall_hours.get)]
        rows.append([name, hours(h), hours(fixed.wall_hours[name]),
                     f"limits ({' and '.join(marks)})" if marks else ""])
    rows.append(["**total**", hours(sum(now.wall_hours.values())),
                 hours(sum(fixed.wall_hours.values())), ""])
    out = [f"**Wall clock** on {i.fleet_vcpus:,.0f} vCPUs, stages one after the other", ""]
    out += table(["stage", "hours as the code stands", "hours with the risks fixed", ""], rows)
    download = next(s for s in stages(i) if s.name.startswith("download"))
    more = dataclasses.replace(i, download_threads=4 * i.download_threads)
    download_more = next(s for s in stages(more) if s.name.startswith("download"))
    crawl_core_h = i.pool_candidates / i.crawl_pairs_per_core_second / HOUR
    out += ["", f"The download cannot end sooner than its largest host allows: "
            f"{i.top_host_share:.0%} of {count(f.curated)} URLs at "
            f"{i.top_host_requests_per_second:,.0f} requests/s take "
            f"{hours(now.politeness_hours)} hours on any fleet. With "
            f"{i.download_threads:.0f} threads per process it is bound by {download.bound} "
            f"({hours(download.vcpu_hours)} vCPU-hours); with "
            f"{more.download_threads:.0f} it is bound by {download_more.bound} "
            f"({hours(download_more.vcpu_hours)}). Extracting the pool from WAT files first "
            f"(`openwit candidates`) would add {hours(crawl_core_h)} core-hours.", ""]
    return out


def render_cost(i: Inputs) -> list[str]:
    now, fixed = totals(i), totals(i, fixed=True)
    training = "training ViT-B/32 (GPU)"

    def build(t):
        return sum(v for k, v in t.costs.items() if k != training)

    rows = [[k, usd(v), usd(fixed.costs[k])] for k, v in now.costs.items()]
    rows.append(["**corpus build**", f"**{usd(build(now))}**", f"**{usd(build(fixed))}**"])
    rows.append(["**build and training**", f"**{usd(build(now) + now.costs[training])}**",
                 f"**{usd(build(fixed) + fixed.costs[training])}**"])
    out = ["**Cost**", ""]
    out += table(["item", "as the code stands", "with the risks fixed"], rows)
    mem_now, mem_fixed = memory(i), memory(i, fixed=True)
    out.append("")
    for label, t, m in (("As the code stands", now, mem_now), ("With the risks fixed", fixed,
                                                                mem_fixed)):
        out.append(
            f"{label}: `openwit curate` on {machine_for(m.text_per_vcpu(i))[0]} "
            f"({hours(t.vcpu_hours_by_half['text'])} vCPU-hours at "
            f"{t.gib_per_vcpu_by_half['text']:.0f} GiB/vCPU), `openwit download` on "
            f"{machine_for(m.image_per_vcpu(i))[0]} ({hours(t.vcpu_hours_by_half['image'])} "
            f"vCPU-hours at {t.gib_per_vcpu_by_half['image']:.0f} GiB/vCPU); "
            f"{hours(t.vcpu_hours)} vCPU-hours, {hours(sum(t.wall_hours.values()))} hours "
            f"on the fleet.")
        out.append("")
    rate = i.gpu_peak_flops * i.gpu_mfu / i.vit_b32_flops_per_sample
    out += [f"Training: {count(i.samples_seen)} samples seen at {rate:,.0f} samples/s per GPU "
            f"is {hours(now.gpu_hours)} GPU-hours ({hours(now.gpu_hours / 64)} hours on 64 "
            f"GPUs); the CPU loader needs {now.loader_cores_per_gpu:.1f} cores per GPU to keep "
            f"up.", ""]
    return out


def render_growth(i: Inputs) -> list[str]:
    f, parts = flow(i), stages(i)
    rows = []
    for pool in (5e8, 1e9, 2e9, 4e9, 8e9):
        grown = dataclasses.replace(i, pool_candidates=pool)
        g, gs, gm = flow(grown), stages(grown), memory(grown)
        text = sum(s.shuffled for s in gs if s.half == "text")
        image = sum(s.shuffled for s in gs if s.half == "image")
        rebuild = next(s for s in gs if s.name.startswith("pass 2"))
        keeps = f"{g.balance_keep:.0%}" + (" (pool too small)" if g.balance_keep > 1 else "")
        rows.append([count(pool), keeps, size(text), size(image), size(text + image),
                     gib(gm.losers_side_input), hours(rebuild.core_hours)])
    out = [f"**Shuffle as the pool grows** (corpus fixed at {count(i.corpus_pairs)})", ""]
    out += table(["pool", "balancing keeps", "text half shuffled", "image half shuffled",
                  "total", "losers side input per process", "pass 2 rebuild core-hours"], rows)
    per_pair = sum(s.shuffled for s in parts if s.half == "image") / f.written
    per_candidate = sum(s.shuffled for s in parts if s.half == "text") / f.pool
    vectors = 2 * f.parts * i.queries * i.count_bytes_per_query
    out += ["", f"The text half shuffles {size(per_candidate)} per pool candidate, "
            f"{size(vectors)} of the {size(per_candidate * f.pool)} being count vectors (one per "
            f"part and per bundle: an upper bound, which combiner lifting lowers when a bundle "
            f"holds several parts); the image half {size(per_pair)} per written pair, "
            f"{size(i.bands_bytes_per_image)} of it per image in the near-duplicate band "
            f"GroupByKey. The first grows with the pool, the second with the corpus.", ""]
    return out


def render_memory(i: Inputs) -> list[str]:
    mem = memory(i)
    jpeg = size(jpeg_bytes(i))
    base_text, base_image = f"{i.curate_peak_rss_mib:,.0f} MiB", f"{i.download_rss_mib:,.0f} MiB"
    rows = [
        ["shard writer's CoGroupByKey: one shard", "samples per shard x (downloaded share x "
         f"{size(i.sample_dict_bytes)} + failed share x {size(i.failure_dict_bytes)} + written "
         f"share x {jpeg} JPEG)", gib(mem.shard_group)],
        ["URL dedup CombinePerKey: one bucket", f"matched / {i.url_buckets:,.0f} x "
         f"{i.url_entry_bytes:.0f} B, copied a few times by the sort", gib(mem.url_bucket)],
        ["sha256 GroupByKey: the largest group", f"placeholder downloads x "
         f"{i.sha_member_bytes:.0f} B, sorted in a list", gib(mem.placeholder_group)],
        ["exact cap Top.SmallestPerKey: one query", f"per-query cap x {i.top_entry_bytes:.0f} B",
         gib(mem.cap_heap)],
        ["curate process", f"{base_text} + URL losers x {i.loser_entry_bytes:.0f} B",
         gib(mem.text_process)],
        ["- the losers side input", f"URL losers x {i.loser_entry_bytes:.0f} B",
         gib(mem.losers_side_input)],
        ["download process", f"{base_image} + img2dataset "
         f"{i.img2dataset_import_mib:,.0f} MiB + bodies in flight + a bundle's images + the "
         "evaluation index", gib(mem.download_process)],
        ["- bodies in flight, worst case", "2 x threads x --max-download-mb",
         gib(mem.in_flight_bodies_worst)],
        ["- images decoding at once, worst case", "vCPUs x --max-image-area x 4 B",
         gib(mem.decodes_worst)],
        ["- a bundle's images before they are staged", "candidates per bundle x fetch success "
         f"x {jpeg}", gib(mem.staged_per_bundle)],
        ["- the evaluation index", f"evaluation images x "
         f"{size(i.eval_index_bytes_per_image)}", gib(mem.eval_index)],
        ["near-duplicate losers process", f"{base_image} + roots + survivor hashes",
         gib(mem.near_losers_process)],
        ["- roots side input", f"near-duplicates x {i.near_loser_entry_bytes:.0f} B",
         gib(mem.roots_side_input)],
        ["- survivor_hashes side input", f"group survivors x "
         f"{size(i.survivor_hashes_bytes)}", gib(mem.survivor_hashes_side_input)],
        ["shard writer process", f"{base_image} + one shard's group", gib(mem.writer_process)],
        ["near-duplicate union-find: one worker", "(near-duplicates + survivors) x "
         f"{i.near_loser_entry_bytes:.0f} B", gib(mem.groups_worker)],
        ["summary of all shard stats: one worker", "up to written x queries per sample x "
         f"{i.shard_stats_query_bytes:.0f} B", gib(mem.summary_worker)],
    ]
    out = ["**Memory per key and per process**", ""]
    out += table(["what", "grows as", "bytes"], rows)
    out.append("")
    return out


def render_machines(i: Inputs) -> list[str]:
    out = ["**Machine types by pool size** (one SDK process per vCPU; corpus = pool x "
           f"{i.corpus_pairs / i.pool_candidates:.2g}; code as it stands)", ""]
    rows = []
    ratio = i.corpus_pairs / i.pool_candidates
    for pool in (1e7, 1e8, 5e8, 2e9):
        scaled = dataclasses.replace(i, pool_candidates=pool, corpus_pairs=pool * ratio)
        sm, fixed = memory(scaled), memory(scaled, fixed=True)
        text_need, image_need = sm.text_per_vcpu(scaled), sm.image_per_vcpu(scaled)
        rows.append([count(pool), count(pool * ratio), gib(text_need), machine_for(text_need)[0],
                     gib(image_need), machine_for(image_need)[0],
                     machine_for(fixed.image_per_vcpu(scaled))[0], gib(sm.groups_worker),
                     gib(sm.summary_worker)])
    out += table(["pool", "corpus", "curate per vCPU", "curate machine", "download per vCPU",
                  "download machine", "download machine, risks fixed",
                  "union-find (one worker)", "summary (one worker)"], rows)
    out += ["", f"**--samples-per-shard** (pool {count(i.pool_candidates)}, corpus "
            f"{count(i.corpus_pairs)})", ""]
    rows = []
    for per_shard in (1_000, 10_000, 50_000, 100_000, 500_000):
        scaled = dataclasses.replace(i, samples_per_shard=per_shard)
        sf, sm = flow(scaled), memory(scaled)
        writer = sm.writer_process + i.worker_overhead_gib * GIB / i.vcpus_per_vm
        tar = sf.written / sf.shards * (jpeg_bytes(i) + i.tar_overhead_bytes)
        rows.append([f"{per_shard:,}", count(sf.shards), gib(sm.shard_group), gib(writer),
                     machine_for(writer)[0], size(tar),
                     f"{sf.downloaded / sf.staged_files:.3g}"])
    out += table(["--samples-per-shard", "shards", "one shard's group", "writer per vCPU",
                  "writer machine", "tar size", "images per staged file"], rows)
    out.append("")
    return out


def render_plan(i: Inputs) -> str:
    f = flow(i)
    head = [f"Pool {count(i.pool_candidates)} candidates, corpus {count(i.corpus_pairs)} pairs, "
            f"{i.samples_per_shard:,.0f} candidates per shard, {i.image_size:.0f} px, "
            f"{i.download_threads:.0f} download threads: balancing must keep "
            f"{f.balance_keep:.1%} of the URL-deduplicated pool"
            + (" (over 100%: the pool is too small for this corpus)." if f.balance_keep > 1
               else "."), ""]
    parts = (head + render_stages(i) + render_wall_clock(i) + render_cost(i) + render_growth(i)
             + render_memory(i) + render_machines(i))
    return "\n".join(parts).rstrip("\n") + "\n"


def value_text(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{value:,.0f}"
    return f"{value:,.6g}"


def render_sources(i: Inputs) -> str:
    rows = []
    for field in dataclasses.fields(Inputs):
        value, source = getattr(i, field.name), source_of(field)
        if source.kind == CODE:
            where = f"`{source.document}` `{source.where}`"
        elif source.where:
            where = f"{source.document}: {source.where}".replace("|", "\\|")
        else:
            where = ""
        note = source.note.replace("|", "\\|")
        rows.append([f"`{field.name}`", value_text(value), source.kind, where, note])
    return "\n".join(table(["input", "value", "kind", "where", "figure or reason"], rows)) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=float, help="candidates in the pool (default 2e9)")
    parser.add_argument("--corpus", type=float, help="pairs to write (default 4e8)")
    parser.add_argument("--samples-per-shard", type=float)
    parser.add_argument("--image-size", type=float)
    parser.add_argument("--download-threads", type=float)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="any other input (see --sources for the names)")
    parser.add_argument("--sources", action="store_true", help="print only the inputs table")
    return parser.parse_args(argv)


def inputs_from(args) -> Inputs:
    names = {f.name for f in dataclasses.fields(Inputs)}
    changes = {name: value for name, value in (
        ("pool_candidates", args.pool), ("corpus_pairs", args.corpus),
        ("samples_per_shard", args.samples_per_shard), ("image_size", args.image_size),
        ("download_threads", args.download_threads)) if value is not None}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in names:
            raise SystemExit(f"capacity.py: error: --set {item}: no input called {name!r}")
        changes[name] = float(value)
    return dataclasses.replace(Inputs(), **changes)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    chosen = inputs_from(args)
    if args.sources:
        print(render_sources(chosen), end="")
    else:
        print(render_plan(chosen))
        print(render_sources(chosen), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
