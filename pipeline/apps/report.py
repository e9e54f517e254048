"""`openwit report`: one self-contained HTML page about a corpus and, when given, a training run,
its evaluation and a balancing ablation.

Every plot is a PNG drawn with matplotlib's Agg canvas and embedded as a base64 `data:` URI,
every corpus image a small JPEG thumbnail made with Pillow and embedded the same way, and the
CSS is inline, so the page can be mailed, archived or opened from a bucket without its folder.
Inputs are read through `core/storage.py` (Beam's FileSystems) and pyarrow, so a corpus on s3://
or gs:// reports like a local one; the images come from a few tars only, streamed into memory
member by member. A section whose input is missing or unreadable says "not available" and why;
the page is still written.

The page holds no timestamp, PNGs carry no software version and the images shown are chosen by
sorted keys and a fixed seed, so the same inputs give the same bytes with the same matplotlib
and Pillow.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import html
import io
import json
import math
import os
import random
import re
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from openwit.pipeline.core import storage
from openwit.pipeline.shards.summary import DUPLICATE_KINDS as SUMMARY_DUPLICATE_KINDS
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import add_output_flag
from openwit.pipeline.core.layout import (
    CURATED_FOLDER,
    EVAL_FILE,
    FAILURES_FOLDER,
    METRICS_FILE,
    QUERY_COUNTS_FILE,
    REMOVED_FOLDER,
    RUN_FILE,
    SHARDS_FOLDER,
    STATS_FILE,
    shard_name,
    shard_paths,
)

# matplotlib is imported inside the drawing helpers only: `openwit --help` imports this module's
# argument function, and matplotlib costs a second to import.

REPORT_FILE = "report.html"

# Size statistics need a sample, not the whole corpus: reading stops after the shard that
# reaches this many rows (shards are read in name order, so the sample is deterministic).
MAX_SIZE_SAMPLE_ROWS = 200_000
SIZE_COLUMNS = ("width", "height", "original_width", "original_height", "original_bytes")
DPI = 100
MAX_LANGUAGES_PLOTTED = 15
MAX_CLASSES_LABELLED = 100  # above this, class names are left off the per-class axes
MAX_CLASSES_LISTED = 30  # class names written out in the zero-shot summary
MAX_CONFUSION_ANNOTATED = 20  # classes up to which each confusion cell shows its count

# Corpus images are shown as thumbnails: a few dozen of them keep the page to a few hundred kB.
THUMBNAIL_PIXELS = 128  # the longer side
THUMBNAIL_QUALITY = 75
# Tars are read into memory member by member; a larger member is skipped, not read.
MAX_TAR_MEMBER_BYTES = 5 * 1024 * 1024
# A small JPEG can declare a huge canvas (a decompression bomb): such images are not decoded.
MAX_SOURCE_PIXELS = 40_000_000
MAX_NEAR_GROUPS = 6
MAX_REMOVED_PER_GROUP = 4
MAX_EVAL_COPIES = 6
# The removed-example files are read in name order until enough examples are found.
MAX_REMOVED_FILES_READ = 16
# A kept image can be in any shard (shards are planned by a hash of the key): its key is looked
# up in this many shard parquet files at most, so a large corpus is not read whole.
MAX_SHARDS_SEARCHED = 64
GALLERY_SAMPLES = 12
GALLERY_SHARDS = 3  # the gallery's samples come from this many shards: only their tars are read
GALLERY_SEED = 0
MAX_CAPTION_SHOWN = 160  # characters of a caption under a thumbnail
MAX_PROBLEMS_LISTED = 10
NEAR_DETAIL = re.compile(r"Hamming distance (\d+) from (\S+), which is kept")
EVAL_DETAIL = re.compile(r"Hamming distance (\d+) from evaluation image (.*)", re.DOTALL)
SHARD_PARQUET = re.compile(r"(?:^|[/\\])(\d+)\.parquet$")  # shards/NNNNNN.parquet


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    corpus: str
    run: str | None = None
    eval_json: str | None = None  # default: RUN/eval.json when it exists
    ablation_json: str | None = None
    output: str | None = None  # default: CORPUS/report.html


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """Stands in for an input that is missing or unreadable; `reason` is shown on the page."""

    reason: str


# ------------------------------------------------------------------------------ reading


def _exists(path: str) -> bool:
    return bool(storage.glob(path))


def _read_json(path: str, what: str):
    if not _exists(path):
        return Unavailable(f"{what}: {path} does not exist")
    try:
        return storage.read_json(path)
    except (OSError, ValueError) as err:
        return Unavailable(f"{what}: could not read {path} ({err})")


def _read_parquet(path: str, columns: tuple[str, ...] | None = None, filters=None) -> pa.Table:
    """The file's columns among `columns` (those it lacks are skipped), read via storage."""
    source = pa.BufferReader(storage.read_bytes(path))
    if columns is not None:
        present = set(pq.read_schema(source).names)
        columns = [c for c in columns if c in present]
    return pq.read_table(source, columns=columns, filters=filters)


def _parquet_files(pattern: str) -> list[str]:
    return [p for p in storage.glob(pattern) if not p.endswith(storage.TEMPORARY_SUFFIX)]


@dataclasses.dataclass(frozen=True)
class SizeSample:
    table: pa.Table  # SIZE_COLUMNS (those present) and `language`, one row per written sample
    shards_read: int
    shards_total: int


@dataclasses.dataclass(frozen=True)
class CorpusData:
    folder: str
    stats: dict | Unavailable
    query_counts: pa.Table | Unavailable
    samples: SizeSample | Unavailable
    failure_counts: dict | Unavailable  # {(stage, reason): records in failures/}
    rejected_languages: dict | Unavailable  # {language: {reason: n}} from the language stage
    curated_languages: dict | Unavailable  # {language: n} from curated.parquet/ (curate only)
    removed_examples: RemovedExamples | Unavailable = Unavailable("not read")
    gallery: Gallery | Unavailable = Unavailable("not read")


@dataclasses.dataclass(frozen=True)
class Picture:
    """A corpus image to show: its thumbnail (a data: URI), or why there is none, and its text."""

    key: str
    caption: str
    url: str
    thumbnail: str | Unavailable


@dataclasses.dataclass(frozen=True)
class RemovedRecord:
    """A removed near or evaluation duplicate, from its KEY.json in a removed-example file."""

    key: str
    url: str
    caption: str
    reason: str
    distance: int
    other: str  # near_duplicate: the key kept instead; eval_duplicate: the evaluation image


@dataclasses.dataclass(frozen=True)
class NearGroup:
    kept: Picture
    removed: list[tuple[Picture, int]]  # each removed image and its Hamming distance


@dataclasses.dataclass(frozen=True)
class EvalCopy:
    picture: Picture
    distance: int
    source: str


@dataclasses.dataclass(frozen=True)
class RemovedExamples:
    groups: list[NearGroup]
    eval_copies: list[EvalCopy]
    files_read: int
    files_total: int
    problems: list[str]  # what could not be shown, and why


@dataclasses.dataclass(frozen=True)
class GallerySample:
    picture: Picture
    queries: list[str]


@dataclasses.dataclass(frozen=True)
class Gallery:
    samples: list[GallerySample]
    shards: list[str]  # the shards' names the samples were drawn from
    problems: list[str]


def load_corpus(folder: str) -> CorpusData:
    stats = _read_json(storage.join(folder, STATS_FILE), STATS_FILE)
    samples = _load_samples(folder)
    curated_languages = Unavailable("only read for a curate-only folder without languages")
    has_languages = isinstance(stats, dict) and stats.get("languages")
    if not has_languages and isinstance(samples, Unavailable):
        curated_languages = _load_curated_languages(folder)
    failure_counts, rejected_languages = _load_failures(folder)
    return CorpusData(folder=folder, stats=stats, query_counts=_load_query_counts(folder),
                      samples=samples, failure_counts=failure_counts,
                      rejected_languages=rejected_languages,
                      curated_languages=curated_languages,
                      removed_examples=_loaded(_load_removed_examples, "removed examples",
                                               folder),
                      gallery=_loaded(_load_gallery, "gallery", folder))


def _loaded(load, what: str, folder: str):
    """`load(folder)`, or Unavailable when a file it reads holds a field of an unexpected type
    (as `guarded` does for sections: one odd file costs one section)."""
    try:
        return load(folder)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        return Unavailable(f"{what}: unexpected input format: {type(err).__name__}: {err}")


def _load_query_counts(folder: str) -> pa.Table | Unavailable:
    path = storage.join(folder, QUERY_COUNTS_FILE)
    if not _exists(path):
        return Unavailable(f"{path} does not exist")
    try:
        return _read_parquet(path, ("query_id", "query", "matched", "kept", "written"))
    except (OSError, ValueError) as err:
        return Unavailable(f"could not read {path} ({err})")


def _load_samples(folder: str) -> SizeSample | Unavailable:
    paths = _parquet_files(storage.join(folder, SHARDS_FOLDER, "*.parquet"))
    if not paths:
        return Unavailable(f"no shard parquet files in {storage.join(folder, SHARDS_FOLDER)} "
                           "(a curate-only folder has no images yet)")
    tables, rows = [], 0
    try:
        for path in paths:
            table = _read_parquet(path, SIZE_COLUMNS + ("language",))
            tables.append(table)
            rows += table.num_rows
            if rows >= MAX_SIZE_SAMPLE_ROWS:
                break
    except (OSError, ValueError) as err:
        return Unavailable(f"could not read the shards' parquet files ({err})")
    return SizeSample(pa.concat_tables(tables, promote_options="default"), len(tables),
                      len(paths))


def _load_curated_languages(folder: str) -> dict | Unavailable:
    paths = _parquet_files(storage.join(folder, CURATED_FOLDER, "*.parquet"))
    if not paths:
        return Unavailable(f"no part files in {storage.join(folder, CURATED_FOLDER)}")
    counts = collections.Counter()
    try:
        for path in paths:
            counts.update(_read_parquet(path, ("language",)).column("language").to_pylist())
    except (OSError, ValueError, KeyError) as err:
        return Unavailable(f"could not read the curated languages ({err})")
    return dict(counts.most_common())


def _load_failures(folder: str) -> tuple[dict | Unavailable, dict | Unavailable]:
    """Failure records per (stage, reason), and the languages the language stage rejected
    (its records' detail reads "fr p=0.57"; empty when langdetect gave no answer)."""
    paths = _parquet_files(storage.join(folder, FAILURES_FOLDER, "*.parquet"))
    if not paths:
        missing = Unavailable(f"no failure records in {storage.join(folder, FAILURES_FOLDER)}")
        return missing, missing
    counts = collections.Counter()
    rejected = collections.defaultdict(collections.Counter)
    try:
        for path in paths:
            table = _read_parquet(path, ("stage", "reason"))
            if table.num_rows == 0:
                continue
            grouped = table.group_by(["stage", "reason"]).aggregate([([], "count_all")])
            stages = grouped.column("stage").to_pylist()
            for stage, reason, n in zip(stages, grouped.column("reason").to_pylist(),
                                        grouped.column("count_all").to_pylist()):
                counts[(stage, reason)] += n
            if "language" in stages:  # only then is the (larger) detail column worth reading
                language_rows = _read_parquet(path, ("reason", "detail"),
                                              filters=[("stage", "=", "language")])
                for reason, detail in zip(language_rows.column("reason").to_pylist(),
                                          language_rows.column("detail").to_pylist()):
                    language = (detail or "").split(" ", 1)[0] or "no answer"
                    rejected[language][reason] += 1
    except (OSError, ValueError, KeyError) as err:
        problem = Unavailable(f"could not read the failure records ({err})")
        return problem, problem
    rejected_or_none = ({language: dict(reasons) for language, reasons in rejected.items()}
                        if rejected else Unavailable("no failure records of the language stage"))
    return dict(counts), rejected_or_none


@dataclasses.dataclass(frozen=True)
class TarRead:
    path: str
    members: dict[str, bytes]  # member name -> its bytes
    skipped: dict[str, str]  # member name -> why it was not read
    error: str | None = None  # why the tar could not be read (to its end)

    def member(self, name: str) -> bytes | Unavailable:
        if name in self.members:
            return self.members[name]
        return Unavailable(self.skipped.get(name) or self.error or f"{self.path} has no {name}")

    @property
    def problems(self) -> list[str]:
        return list(self.skipped.values()) + ([self.error] if self.error else [])


def _read_tar(path: str, wanted: set[str] | None = None) -> TarRead:
    """The tar's regular files (only those named in `wanted`, when given), read into memory.

    The tar is read as a stream, so nothing is extracted to disk, a shard is not held whole,
    and reading stops once every wanted member is found. A member over MAX_TAR_MEMBER_BYTES is
    skipped; a broken tar keeps the members read before the break."""
    if not _exists(path):
        return TarRead(path, {}, {}, f"{path} does not exist")
    if wanted is not None and not wanted:
        return TarRead(path, {}, {})
    members, skipped, error = {}, {}, None
    remaining = set(wanted) if wanted is not None else None
    try:
        with storage.open_read(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or (remaining is not None and member.name not in remaining):
                    continue
                if member.size > MAX_TAR_MEMBER_BYTES:
                    skipped[member.name] = (f"{member.name} in {path} skipped ({member.size:,} "
                                            f"bytes, over the {MAX_TAR_MEMBER_BYTES:,}-byte limit)")
                else:
                    members[member.name] = tar.extractfile(member).read()
                if remaining is not None:
                    remaining.discard(member.name)
                    if not remaining:
                        break
    except (tarfile.TarError, OSError, EOFError) as err:
        error = f"could not read {path} ({err})"
    return TarRead(path, members, skipped, error)


def thumbnail_uri(data: bytes) -> str | Unavailable:
    """The image downscaled to THUMBNAIL_PIXELS and re-encoded as JPEG, as a data: URI."""
    from PIL import Image  # imported here for the same reason as matplotlib

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                return Unavailable(f"{image.width}×{image.height} pixels, too many to decode")
            # A JPEG is then decoded at a reduced scale, which is faster and smaller.
            image.draft("RGB", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        return Unavailable(f"not a readable image ({err})")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(image: bytes | Unavailable, key: str, caption: str, url: str) -> Picture:
    thumbnail = image if isinstance(image, Unavailable) else thumbnail_uri(image)
    return Picture(key=key, caption=caption, url=url, thumbnail=thumbnail)


def _shard_parquets(folder: str) -> list[tuple[int, str]]:
    """(shard index, parquet path) of every shard, in name order."""
    matches = [(SHARD_PARQUET.search(path), path)
               for path in _parquet_files(storage.join(folder, SHARDS_FOLDER, "*.parquet"))]
    return [(int(match[1]), path) for match, path in matches if match]


def _removed_record(text: bytes) -> RemovedRecord | None:
    """A failure record of a removed near or evaluation duplicate, or None when it is not one."""
    record = json.loads(text.decode("utf-8"))
    reason = record.get("reason")
    pattern = {"near_duplicate": NEAR_DETAIL, "eval_duplicate": EVAL_DETAIL}.get(reason)
    match = pattern.fullmatch(str(record.get("detail") or "")) if pattern else None
    if match is None or not record.get("key"):
        return None
    return RemovedRecord(key=str(record["key"]), url=str(record.get("url") or ""),
                         caption=str(record.get("caption") or ""), reason=reason,
                         distance=int(match[1]), other=match[2])


def _removed_records(tar: TarRead) -> tuple[list[tuple[RemovedRecord, bytes | Unavailable]],
                                            list[str]]:
    """The records of one removed-example file, each with its image (or why there is none)."""
    found, problems = [], []
    for name in sorted(tar.members):
        if not name.endswith(".json"):
            continue
        try:
            record = _removed_record(tar.members[name])
        except (ValueError, AttributeError) as err:  # not JSON, or not a JSON object
            problems.append(f"{name} in {tar.path} is not a failure record ({err})")
            continue
        if record is None:
            problems.append(f"{name} in {tar.path} is not a near or evaluation duplicate's "
                            "record")
            continue
        found.append((record, tar.member(name.removesuffix(".json") + ".jpg")))
    return found, problems


def _removed_picture(record: RemovedRecord, image: bytes | Unavailable) -> Picture:
    return _picture(image, record.key, record.caption, record.url)


def _record_key(item: tuple[RemovedRecord, object]) -> str:
    """Examples are shown by key: the same removed files show the same examples."""
    return item[0].key


def _load_removed_examples(folder: str) -> RemovedExamples | Unavailable:
    """A few near-duplicate groups (the kept image and those it removed) and evaluation copies,
    from the shards' removed-example files, read in name order until there are enough."""
    pattern = storage.join(folder, REMOVED_FOLDER, "*.tar")
    paths = storage.glob(pattern)
    if not paths:
        return Unavailable(f"no removed-example files ({pattern}); corpora built before they "
                           "were written have none")
    near = collections.defaultdict(list)  # kept key -> [(record, image)]
    copies, problems, read = [], [], 0
    for path in paths[:MAX_REMOVED_FILES_READ]:
        if len(near) >= MAX_NEAR_GROUPS and len(copies) >= MAX_EVAL_COPIES:
            break
        tar = _read_tar(path)
        read += 1
        found, bad = _removed_records(tar)
        problems += tar.problems + bad
        for record, image in found:
            if record.reason == "near_duplicate":
                near[record.other].append((record, image))
            else:
                copies.append((record, image))
    if not near and not copies and problems:
        return Unavailable("; ".join(_listed(problems)))
    kept_keys = sorted(near)[:MAX_NEAR_GROUPS]
    kept, kept_problems = _kept_pictures(folder, kept_keys)
    groups = [NearGroup(kept[key], [(_removed_picture(record, image), record.distance)
                                    for record, image in sorted(near[key], key=_record_key)
                                    [:MAX_REMOVED_PER_GROUP]])
              for key in kept_keys]
    eval_copies = [EvalCopy(_removed_picture(record, image), record.distance, record.other)
                   for record, image in sorted(copies, key=_record_key)[:MAX_EVAL_COPIES]]
    return RemovedExamples(groups, eval_copies, read, len(paths), problems + kept_problems)


def _kept_pictures(folder: str, keys: list[str]) -> tuple[dict[str, Picture], list[str]]:
    """The kept images of `keys`: their shard found from the shards' parquet key columns, the
    image read from that shard's tar (only the tars of shards that hold one)."""
    found, searched, problems = _find_in_shards(folder, set(keys))
    by_shard = collections.defaultdict(list)
    for key in keys:
        if key in found:
            by_shard[found[key][0]].append(key)
    pictures = {}
    for index, shard_keys in sorted(by_shard.items()):
        tar = _read_tar(shard_paths(folder, index)["tar"], {f"{key}.jpg" for key in shard_keys})
        for key in shard_keys:
            _, caption, url = found[key]
            pictures[key] = _picture(tar.member(f"{key}.jpg"), key, caption, url)
    for key in keys:
        if key not in pictures:
            pictures[key] = Picture(key=key, caption="", url="", thumbnail=Unavailable(
                f"not found in the key column of {searched} shard parquet file(s)"))
    return pictures, problems


def _find_in_shards(folder: str, keys: set[str]) -> tuple[dict[str, tuple[int, str, str]], int,
                                                          list[str]]:
    """{key: (shard index, caption, url)} for the `keys` written, searched in shard order; and
    how many shard parquet files were searched."""
    found, problems, searched = {}, [], 0
    for index, path in _shard_parquets(folder)[:MAX_SHARDS_SEARCHED]:
        if len(found) == len(keys):
            break
        searched += 1
        try:
            table = _read_parquet(path, ("key", "caption", "url"))
        except (OSError, ValueError) as err:
            problems.append(f"could not read {path} ({err})")
            continue
        for row in table.to_pylist():
            if row.get("key") in keys:
                found[row["key"]] = (index, str(row.get("caption") or ""),
                                     str(row.get("url") or ""))
    return found, searched, problems


def _load_gallery(folder: str) -> Gallery | Unavailable:
    """GALLERY_SAMPLES written samples drawn with a fixed seed from GALLERY_SHARDS shards (the
    same corpus gives the same gallery), with their thumbnails from those shards' tars."""
    shards = _shard_parquets(folder)
    if not shards:
        return Unavailable(f"no shard parquet files in {storage.join(folder, SHARDS_FOLDER)}")
    chooser = random.Random(GALLERY_SEED)
    drawn = sorted(chooser.sample(shards, min(GALLERY_SHARDS, len(shards))))
    rows, problems = [], []
    for index, path in drawn:
        try:
            table = _read_parquet(path, ("key", "caption", "url", "queries"))
        except (OSError, ValueError) as err:
            problems.append(f"could not read {path} ({err})")
            continue
        rows += [(index, row) for row in table.to_pylist() if row.get("key")]
    if not rows:
        return Unavailable("; ".join(problems) or "the drawn shards hold no samples")
    picked = [rows[i] for i in sorted(chooser.sample(range(len(rows)),
                                                     min(GALLERY_SAMPLES, len(rows))))]
    samples = []
    for index in sorted({index for index, _ in picked}):
        shard_rows = [row for shard, row in picked if shard == index]
        tar = _read_tar(shard_paths(folder, index)["tar"],
                        {f"{row['key']}.jpg" for row in shard_rows})
        for row in shard_rows:
            key = str(row["key"])
            picture = _picture(tar.member(f"{key}.jpg"), key, str(row.get("caption") or ""),
                               str(row.get("url") or ""))
            samples.append(GallerySample(picture, [str(q) for q in row.get("queries") or []]))
    return Gallery(samples, [shard_name(index) for index, _ in drawn], problems)


def _listed(problems: list[str]) -> list[str]:
    """The first MAX_PROBLEMS_LISTED problems, and how many more there are."""
    listed = problems[:MAX_PROBLEMS_LISTED]
    if len(problems) > MAX_PROBLEMS_LISTED:
        listed.append(f"{len(problems) - MAX_PROBLEMS_LISTED} more")
    return listed


def load_metrics(run: str) -> list[dict] | Unavailable:
    path = storage.join(run, METRICS_FILE)
    if not _exists(path):
        return Unavailable(f"{path} does not exist")
    try:
        text = storage.read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return Unavailable(f"could not read {path} ({err})")
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash mid-write; the rest is still worth showing
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    if not records:
        return Unavailable(f"{path} holds no step records")
    return sorted(records, key=lambda r: r["step"])


def batch_size_from_run_file(run: str) -> int | None:
    """The per-rank batch size from the run's run.json, or None.

    Old metrics.jsonl files have no sample count, so samples seen = step x batch needs the
    training config; it is read from JSON, never from the checkpoint (opening a pickle from
    someone's run folder could run their code).
    """
    settings = _read_json(storage.join(run, RUN_FILE), RUN_FILE)
    try:
        return int(settings["train_config"]["batch_size"])
    except (TypeError, KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------- HTML helpers


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if value == int(value) and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:,.3f}".rstrip(
            "0").rstrip(".")
    return str(value)


def _pct(part, whole) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


NUMERIC_CELL = '<td class="num">{}</td>'
TEXT_CELL = "<td>{}</td>"


def _table(headers: list[str], rows: list[list], numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped, columns from `numeric_from` are right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            (NUMERIC_CELL if i >= numeric_from else TEXT_CELL).format(html.escape(_fmt(cell)))
            for i, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _not_available(what: str, reason: str) -> str:
    return (f'<p class="na">{html.escape(what)}: not available '
            f"({html.escape(reason)})</p>")


def _section(anchor: str, title: str, body: str, level: int = 3) -> str:
    return (f'<section id="{html.escape(anchor)}"><h{level}>{html.escape(title)}</h{level}>'
            f"{body}</section>")


def _cards(items: list[tuple[str, object]]) -> str:
    cards = "".join(f'<div class="card"><div class="value">{html.escape(_fmt(value))}</div>'
                    f'<div class="label">{html.escape(label)}</div></div>'
                    for label, value in items)
    return f'<div class="cards">{cards}</div>'


def _paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def new_figure(width: float = 7.5, height: float = 3.8, ncols: int = 1):
    """A figure on matplotlib's Agg canvas and its axes.

    The figure is created directly, not through pyplot, so no global figure registry holds it:
    nothing needs closing, and reports built in one process cannot leak figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=True)
    return figure, axes


def figure_to_img(figure, alt: str) -> str:
    """The figure as an <img> with an embedded PNG; the figure is cleared afterwards."""
    buffer = io.BytesIO()
    # No "Software" entry: the PNG bytes then do not change with matplotlib's version string.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    figure.clear()
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'
            "</figure>")


# ------------------------------------------------------------------------- corpus sections


def _corpus_kind(stats: dict) -> str:
    return "build" if "written" in stats else "curate"


def headline_section(data: CorpusData) -> str:
    title = "Headline numbers"
    stats = data.stats
    if isinstance(stats, Unavailable):
        return _section("headline", title, _not_available(title, stats.reason))
    kind = _corpus_kind(stats)
    out_label, out_value = (("written", stats.get("written")) if kind == "build"
                            else ("curated", stats.get("curated")))
    input_rows = stats.get("input_rows")
    dropped = stats.get("dropped")
    if dropped is None and isinstance(input_rows, int) and isinstance(out_value, int):
        dropped = input_rows - out_value
    items = [("input rows", input_rows), (out_label, out_value), ("dropped", dropped)]
    wall = stats.get("wall_seconds")
    items.append(("wall time (s)", wall))
    shards = stats.get("shards", {})
    if shards:
        items.append(("shards with samples", shards.get("with_samples")))
        if "tar_bytes" in shards:
            items.append(("tar size (MB)", round(shards["tar_bytes"] / 1e6, 1)))
    cap = stats.get("balance", {}).get("per_query_cap")
    if cap is not None:
        items.append(("per-query cap", cap))
    text = (f"A {'built corpus' if kind == 'build' else 'curate-only folder (no downloads yet)'}"
            f"; {_pct(out_value or 0, input_rows)} of the input rows {out_label}.")
    problems = stats.get("accounting_problems") or []
    body = _cards(items) + _paragraph(text)
    if problems:
        body += '<p class="warn">Accounting problems: ' + html.escape("; ".join(problems)) + "</p>"
    return _section("headline", title, body)


def stages_section(data: CorpusData) -> str:
    title = "Counts at every stage"
    stats = data.stats
    if isinstance(stats, Unavailable):
        return _section("stages", title, _not_available("Stage counts", stats.reason))
    stages = stats.get("stages") or []
    if not stages:
        return _section("stages", title, _not_available("Stage counts", "stats.json has no stages"))
    rows = []
    for stage in stages:
        dropped = stage.get("dropped", {})
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in
                            sorted(dropped.items(), key=lambda item: (-item[1], item[0])))
        rows.append([stage["stage"], stage["in"], stage["kept"], sum(dropped.values()),
                     _pct(sum(dropped.values()), stage["in"]), reasons or "–"])
    figure, axes = new_figure(7.5, 0.45 * len(stages) + 1.2)
    names = [s["stage"] for s in stages]
    positions = list(range(len(stages)))
    axes.barh(positions, [s["in"] for s in stages], color="#d9d9d9", label="in")
    axes.barh(positions, [s["kept"] for s in stages], color="#4c72b0", label="kept")
    axes.set_yticks(positions, names)
    axes.invert_yaxis()
    axes.set_xlabel("candidates")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title("candidates into and kept by each stage")
    table = _table(["stage", "in", "kept", "dropped", "dropped %", "reasons"], rows)
    return _section("stages", title, figure_to_img(figure, "stage funnel") + table)


def query_counts_section(data: CorpusData) -> str:
    title = "Per-query counts before and after balancing"
    counts = data.query_counts
    if isinstance(counts, Unavailable):
        return _section("queries", title, _not_available("Per-query counts", counts.reason))
    if counts.num_rows == 0 or "matched" not in counts.column_names:
        return _section("queries", title,
                        _not_available("Per-query counts", "query_counts.parquet is empty"))
    columns = {name: counts.column(name).to_pylist() for name in counts.column_names}
    tie_break = columns.get("query_id") or columns.get("query") or list(range(counts.num_rows))
    order = sorted(range(counts.num_rows), key=lambda i: (-columns["matched"][i], tie_break[i]))
    series = [name for name in ("matched", "kept", "written") if name in columns]
    figure, axes = new_figure(7.5, 4.0)
    ranks = list(range(1, counts.num_rows + 1))
    colours = {"matched": "#999999", "kept": "#4c72b0", "written": "#dd8452"}
    for name in series:
        axes.plot(ranks, [columns[name][i] for i in order], label=name, color=colours[name],
                  linewidth=1.2, marker="." if counts.num_rows <= 200 else None)
    stats = data.stats if isinstance(data.stats, dict) else {}
    balance = stats.get("balance", {})
    if balance.get("per_query_cap"):
        axes.axhline(balance["per_query_cap"], color="#c44e52", linestyle="--",
                     label=f"cap {balance['per_query_cap']:,}")
    if balance.get("target") and balance.get("target") != balance.get("per_query_cap"):
        axes.axhline(balance["target"], color="#c44e52", linestyle=":",
                     label=f"balancing target {balance['target']:,.0f}")
    axes.set_yscale("log", nonpositive="mask")
    if counts.num_rows > 1000:
        axes.set_xscale("log")
    axes.set_xlabel("query rank (by matched candidates)")
    axes.set_ylabel("candidates (log)")
    axes.legend()
    axes.set_title("per query: " + ", ".join(
        {"matched": "matched", "kept": "kept by balancing", "written": "written"}[n]
        for n in series))
    totals = [["queries with any", *(sum(1 for v in columns[n] if v) for n in series)],
              ["candidates (sum over queries)", *(sum(columns[n]) for n in series)],
              ["largest query", *(max(columns[n]) for n in series)]]
    table = _table(["", *series], totals)
    head_rows = [[columns["query"][i], *(columns[n][i] for n in series)] for i in order[:10]]
    head = "<h4>The 10 queries with most matches</h4>" + _table(["query", *series], head_rows)
    note = _paragraph("A candidate counts once for every query it matched, so the sums exceed "
                      "the candidate counts.")
    return _section("queries", title, figure_to_img(figure, "per-query counts") + table + note
                    + head)


def failures_section(data: CorpusData) -> str:
    title = "Failures by reason"
    stats = data.stats
    if isinstance(stats, Unavailable):
        return _section("failures", title, _not_available("Failures", stats.reason))
    by_reason = stats.get("failures_by_reason") or {}
    if not by_reason:
        return _section("failures", title,
                        _not_available("Failures", "stats.json has no failures_by_reason"))
    stage_of = {reason: stage["stage"] for stage in stats.get("stages", [])
                for reason in stage.get("dropped", {})}
    reasons = sorted(by_reason, key=lambda r: (-by_reason[r], r))
    pipeline_order = [stage["stage"] for stage in stats.get("stages", [])]
    stage_names = [s for s in pipeline_order if any(stage_of.get(r) == s for r in reasons)]
    if any(r not in stage_of for r in reasons):
        stage_names.append("?")
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
               "#8c8c8c", "#ccb974", "#64b5cd"]
    colour_of = {stage: palette[i % len(palette)] for i, stage in enumerate(stage_names)}
    figure, axes = new_figure(7.5, 0.28 * len(reasons) + 1.3)
    positions = list(range(len(reasons)))
    bars = axes.barh(positions, [by_reason[r] for r in reasons],
                     color=[colour_of[stage_of.get(r, "?")] for r in reasons])
    axes.bar_label(bars, labels=[f"{by_reason[r]:,}" for r in reasons], padding=2, fontsize=8)
    axes.margins(x=0.12)
    axes.set_yticks(positions, reasons)
    axes.invert_yaxis()
    axes.set_xlabel("candidates dropped")
    from matplotlib.patches import Patch

    axes.legend(handles=[Patch(color=colour_of[s], label=s) for s in stage_names],
                title="stage", loc="lower right")
    axes.set_title("drops by reason, coloured by stage")
    records = data.failure_counts
    record_counts = collections.Counter()
    if isinstance(records, dict):
        for (_, reason), n in records.items():
            record_counts[reason] += n
    rows = []
    for reason in reasons:
        recorded = record_counts.get(reason) if isinstance(records, dict) else None
        rows.append([reason, stage_of.get(reason, "?"), by_reason[reason], recorded])
    table = _table(["reason", "stage", STATS_FILE, f"records in {FAILURES_FOLDER}/"], rows,
                   numeric_from=2)
    if isinstance(records, Unavailable):
        note = _not_available("Failure records", records.reason)
    else:
        mismatched = [r for r in reasons if record_counts.get(r, 0) != by_reason[r]]
        note = _paragraph(
            "Every dropped candidate has a record in failures/ with its reason."
            if not mismatched else
            "Counts in stats.json and records in failures/ differ for: " + ", ".join(mismatched)
            + " (a resumed run keeps earlier shards' records; a moved folder may lack some).")
    return _section("failures", title, figure_to_img(figure, "failures by reason") + table
                    + note)


def _kept_languages(data: CorpusData) -> tuple[dict, str] | Unavailable:
    stats = data.stats if isinstance(data.stats, dict) else {}
    kind = _corpus_kind(stats) if stats else "build"
    label = "written" if kind == "build" else "curated"
    if stats.get("languages"):
        return dict(stats["languages"]), label
    samples = data.samples
    if isinstance(samples, SizeSample) and "language" in samples.table.column_names:
        counts = collections.Counter(samples.table.column("language").to_pylist())
        return dict(counts), "written (shard sample)"
    if isinstance(data.curated_languages, dict):
        return data.curated_languages, "curated"
    reasons = [x.reason for x in (data.stats, data.samples, data.curated_languages)
               if isinstance(x, Unavailable)]
    return Unavailable("; ".join(reasons) or "no language counts")


def languages_section(data: CorpusData) -> str:
    title = "Language mix"
    kept = _kept_languages(data)
    if isinstance(kept, Unavailable):
        return _section("languages", title, _not_available("Language mix", kept.reason))
    kept_counts, kept_label = kept
    rejected = data.rejected_languages if isinstance(data.rejected_languages, dict) else {}
    rejected_reasons = sorted({reason for reasons in rejected.values() for reason in reasons})
    languages = sorted(set(kept_counts) | set(rejected),
                       key=lambda lang: (-(kept_counts.get(lang, 0)
                                           + sum(rejected.get(lang, {}).values())), lang))
    shown = languages[:MAX_LANGUAGES_PLOTTED]
    figure, axes = new_figure(7.5, 0.3 * len(shown) + 1.4)
    positions = list(range(len(shown)))
    left = [0] * len(shown)
    segments = [(kept_label, [kept_counts.get(lang, 0) for lang in shown], "#4c72b0")]
    colours = ["#dd8452", "#c44e52", "#8c8c8c"]
    for i, reason in enumerate(rejected_reasons):
        segments.append((f"dropped: {reason}",
                         [rejected.get(lang, {}).get(reason, 0) for lang in shown],
                         colours[i % len(colours)]))
    for label, values, colour in segments:
        axes.barh(positions, values, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, values)]
    for position, total in zip(positions, left):
        axes.text(total, position, f" {total:,}", va="center", fontsize=8)
    axes.margins(x=0.12)
    axes.set_yticks(positions, shown)
    axes.invert_yaxis()
    axes.set_xlabel("candidates")
    axes.legend(loc="lower right")
    axes.set_title("languages kept and dropped by the language filter")
    rows = [[lang, kept_counts.get(lang, 0),
             *(rejected.get(lang, {}).get(reason, 0) for reason in rejected_reasons)]
            for lang in languages]
    table = _table(["language", kept_label, *(f"dropped: {r}" for r in rejected_reasons)], rows)
    note = _paragraph(
        f"{kept_label.capitalize()} languages from "
        + (STATS_FILE if isinstance(data.stats, dict) and data.stats.get("languages")
           else "the samples themselves")
        + "; dropped languages from the language stage's failure records (langdetect's best "
        "answer)." + (f" {len(languages) - len(shown)} more languages in the table only."
                      if len(languages) > len(shown) else ""))
    if isinstance(data.rejected_languages, Unavailable):
        note += _not_available("Dropped languages", data.rejected_languages.reason)
    return _section("languages", title, figure_to_img(figure, "language mix") + note + table)


def _quantiles(values: list[float]) -> list:
    ordered = sorted(values)
    if not ordered:
        return [None] * 5
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.05, 0.5, 0.95)]
    return [ordered[0], *pick, ordered[-1]]


def image_sizes_section(data: CorpusData) -> str:
    title = "Image sizes"
    samples = data.samples
    if isinstance(samples, Unavailable):
        return _section("sizes", title, _not_available("Image sizes", samples.reason))
    table = samples.table
    columns = {name: [v for v in table.column(name).to_pylist() if v is not None]
               for name in SIZE_COLUMNS if name in table.column_names}
    if not columns.get("width") or not columns.get("height"):
        return _section("sizes", title,
                        _not_available("Image sizes", "the shards have no width/height"))
    has_original = bool(columns.get("original_width")) and bool(columns.get("original_height"))
    has_bytes = bool(columns.get("original_bytes"))
    panels = 1 + has_original + has_bytes
    figure, axes = new_figure(4.0 * panels, 3.6, ncols=panels)
    axes = list(axes) if panels > 1 else [axes]
    _stored_sizes_plot(axes[0], columns["width"], columns["height"])
    panel = 1
    if has_original:
        scatter = axes[panel]
        panel += 1
        scatter.scatter(table.column("original_width").to_pylist(),
                        table.column("original_height").to_pylist(), s=4, alpha=0.3,
                        color="#4c72b0", linewidths=0)
        _log_axis_with_plain_numbers(scatter.xaxis, scatter.set_xscale)
        _log_axis_with_plain_numbers(scatter.yaxis, scatter.set_yscale)
        scatter.set_xlabel("original width (log)")
        scatter.set_ylabel("original height (log)")
        scatter.set_title("downloaded image")
    if has_bytes:
        sizes = axes[panel]
        kilobytes = [b / 1024 for b in columns["original_bytes"] if b > 0]
        if kilobytes:
            edges = _log_bins(min(kilobytes), max(kilobytes), 30)
            sizes.hist(kilobytes, bins=edges, color="#55a868")
            _log_axis_with_plain_numbers(sizes.xaxis, sizes.set_xscale)
        sizes.set_xlabel("downloaded KiB (log)")
        sizes.set_ylabel("samples")
        sizes.set_title("download size")
    rows = [[name, *_quantiles(values)] for name, values in columns.items()]
    summary = _table(["column", "min", "5%", "median", "95%", "max"], rows)
    note = _paragraph(
        f"From {table.num_rows:,} samples in "
        + (f"all {samples.shards_total} shards." if samples.shards_read == samples.shards_total
           else f"the first {samples.shards_read} of {samples.shards_total} shards."))
    return _section("sizes", title, figure_to_img(figure, "image sizes") + note + summary)


def _stored_sizes_plot(axes, widths: list[int], heights: list[int]) -> None:
    """Stored sizes: a bar per size when there are few (a fixed-size resize mode gives one),
    else width and height histograms."""
    sizes = collections.Counter(zip(widths, heights))
    if len(sizes) <= 12:
        ordered = sorted(sizes, key=lambda size: (-sizes[size], size))
        bars = axes.bar(range(len(ordered)), [sizes[size] for size in ordered], color="#4c72b0")
        axes.bar_label(bars, labels=[f"{sizes[size]:,}" for size in ordered], fontsize=8)
        axes.set_xticks(range(len(ordered)), [f"{w}×{h}" for w, h in ordered],
                        rotation=30 if len(ordered) > 4 else 0)
        axes.set_xlabel("width × height")
    else:
        axes.hist([widths, heights], bins=30, label=["width", "height"],
                  color=["#4c72b0", "#dd8452"])
        axes.set_xlabel("pixels")
        axes.legend()
    axes.set_ylabel("samples")
    axes.set_title("stored image")


def _log_axis_with_plain_numbers(axis, set_scale) -> None:
    # Ticks at 1, 2, 5 x 10^k read as "200, 500, 1000" instead of matplotlib's "2 x 10^2".
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axis.set_minor_formatter(NullFormatter())


def _log_bins(low: float, high: float, count: int) -> list[float]:
    if high <= low:
        return [low * 0.9, high * 1.1]
    step = (math.log10(high) - math.log10(low)) / count
    return [10 ** (math.log10(low) + i * step) for i in range(count + 1)]


# What each kind of `summary.DUPLICATE_KINDS` (its key in stats.json's duplicates_removed,
# and the stage and reason that count it in a stats.json written before that key) means.
DUPLICATE_MEANINGS = {
    "url": "repeated URL",
    "identical_image": "identical image bytes",
    "near_duplicate": "near-duplicate image",
    "eval_duplicate": "copy of an evaluation image",
}
DUPLICATE_KINDS = tuple((kind, DUPLICATE_MEANINGS[kind], stage, reason)
                        for kind, stage, reason in SUMMARY_DUPLICATE_KINDS)


def _duplicate_counts(stats: dict) -> tuple[dict[str, int], bool] | Unavailable:
    """Duplicates removed by kind, and whether they come from duplicates_removed (True) or,
    for an older stats.json, from the dedup stages' drop counts (False)."""
    recorded = stats.get("duplicates_removed")
    if isinstance(recorded, dict):
        return {kind: int(recorded.get(kind) or 0) for kind, *_ in DUPLICATE_KINDS}, True
    dropped = {entry["stage"]: entry.get("dropped", {}) for entry in stats.get("stages", [])}
    if not any(stage in dropped for _, _, stage, _ in DUPLICATE_KINDS):
        return Unavailable("stats.json has neither duplicates_removed nor a dedup stage")
    return {kind: int(dropped.get(stage, {}).get(reason, 0))
            for kind, _, stage, reason in DUPLICATE_KINDS}, False


def _duplicate_counts_table(stats: dict, counts: dict[str, int]) -> str:
    stage_input = {entry["stage"]: entry["in"] for entry in stats.get("stages", [])}
    rows = []
    for kind, meaning, stage, reason in DUPLICATE_KINDS:
        whole = stage_input.get(stage)
        rows.append([meaning, stage, reason, counts[kind], whole,
                     _pct(counts[kind], whole) if whole is not None else "–"])
    return _table(["removed as", "stage", "reason", "removed", "stage input", "share"], rows,
                  numeric_from=3)


def _evaluation_set_note(stats: dict, counts: dict[str, int]) -> str:
    excluded = (stats.get("config") or {}).get("excluded_images")
    if not isinstance(excluded, dict):
        return _paragraph("No evaluation set was excluded (stats.json has no "
                          "config.excluded_images).")
    text = (f"Evaluation set: {_fmt(excluded.get('hashed'))} images hashed, "
            f"{_fmt(excluded.get('unreadable'))} unreadable; {_fmt(counts['eval_duplicate'])} "
            "copies of them removed from the corpus.")
    examples = [f"{e[0]} ({e[1]})" if isinstance(e, (list, tuple)) and len(e) == 2 else str(e)
                for e in (excluded.get("unreadable_examples") or [])[:MAX_PROBLEMS_LISTED]]
    if examples:
        text += " Unreadable: " + "; ".join(examples) + "."
    return _paragraph(text)


def _near_distance_note(stats: dict) -> str:
    dedup = (stats.get("config") or {}).get("dedup") or {}
    distance, crops, step = dedup.get("near_distance"), dedup.get("near_crops"), dedup.get("colour_step")
    if not isinstance(distance, int):
        return ""
    views = ("the whole picture or any of its centre crops" if crops
             else "the whole picture")
    colour = (f", and whose colours agree (the mean L*a*b* of each cell of a 3x3 grid within "
              f"one level of {step})" if isinstance(step, int) and step else "")
    return _paragraph(f"Near-duplicate threshold: two images count as one when perceptual "
                      f"hashes of {views} are at most {distance} bits apart (Hamming "
                      f"distance){colour}.")


def _thumbnail(picture: Picture, lines: list[str]) -> str:
    """A thumbnail with its key, caption and `lines` beneath; every text is escaped here, as
    keys, captions, URLs and details come from the web."""
    caption = picture.caption[:MAX_CAPTION_SHOWN] + (
        "…" if len(picture.caption) > MAX_CAPTION_SHOWN else "")
    if isinstance(picture.thumbnail, Unavailable):
        image = _not_available("Image", picture.thumbnail.reason)
    else:
        image = (f'<img src="{picture.thumbnail}" alt="{html.escape(caption)}" '
                 f'title="{html.escape(picture.url)}">')
    text = "".join(f"<br>{html.escape(line)}" for line in lines)
    return (f'<figure class="thumb">{image}<figcaption><code>{html.escape(picture.key)}</code>'
            f"<br>{html.escape(caption) or '<i>no caption</i>'}{text}</figcaption></figure>")


def _near_groups_html(groups: list[NearGroup]) -> str:
    parts = []
    for group in groups:
        kept = _thumbnail(group.kept, ["kept"])
        removed = "".join(_thumbnail(picture, [f"removed: Hamming distance {distance}"])
                          for picture, distance in group.removed)
        parts.append(f'<div class="thumbs group">{kept}{removed}</div>')
    return "".join(parts)


def _eval_copies_html(copies: list[EvalCopy]) -> str:
    if not copies:
        return ""
    return '<div class="thumbs">' + "".join(
        _thumbnail(copy.picture, [f"removed: Hamming distance {copy.distance} from "
                                  f"evaluation image {copy.source}"])
        for copy in copies) + "</div>"


def _examples_html(what: str, shown: str, removed: int, examples: RemovedExamples) -> str:
    """The examples of one kind, a note that there were none to remove, or why none show."""
    if shown:
        return shown
    if not removed:
        return _paragraph(f"No {what} were removed.")
    return _not_available(what.capitalize(), f"none in the first {examples.files_read} of "
                          f"{examples.files_total} removed-example files")


def _removed_examples_html(examples: RemovedExamples | Unavailable,
                           counts: dict[str, int]) -> str:
    if isinstance(examples, Unavailable):
        if not counts["near_duplicate"] and not counts["eval_duplicate"]:
            return _paragraph("No near-duplicates or evaluation copies were removed, so there "
                              "are no examples to show.")
        return "<h4>Examples</h4>" + _not_available("Duplicate examples", examples.reason)
    body = _paragraph(
        "Chosen by key from the first "
        f"{examples.files_read} of {examples.files_total} removed-example files "
        f"({REMOVED_FOLDER}/NNNNNN.tar, which hold the "
        "first few of each shard); the distance is between perceptual hashes.")
    body += ("<h4>Near-duplicates: the kept image and those it removed</h4>"
             + _examples_html("near-duplicate examples", _near_groups_html(examples.groups),
                              counts["near_duplicate"], examples))
    body += ("<h4>Copies of evaluation images</h4>"
             + _examples_html("evaluation copies", _eval_copies_html(examples.eval_copies),
                              counts["eval_duplicate"], examples))
    if examples.problems:
        body += _not_available("Some examples", "; ".join(_listed(examples.problems)))
    return body


def duplicates_section(data: CorpusData) -> str:
    title = "Duplicates removed"
    stats = data.stats
    if isinstance(stats, Unavailable):
        return _section("duplicates", title, _not_available("Duplicates", stats.reason))
    counts = _duplicate_counts(stats)
    if isinstance(counts, Unavailable):
        return _section("duplicates", title, _not_available("Duplicates", counts.reason))
    counts, recorded = counts
    source = (_paragraph("Counts from stats.json's duplicates_removed.") if recorded else
              _paragraph("This stats.json predates duplicates_removed: the counts come from "
                         "the dedup stages' drops."))
    explanations = _paragraph(
        "dedup_url: the same canonical URL listed again (the smallest key is kept); "
        "dedup_image: identical downloaded bytes (sha256), near-identical images (perceptual "
        "hash within the threshold), and copies of evaluation images (--exclude-images); "
        "among duplicates the smallest key is kept.")
    body = (_duplicate_counts_table(stats, counts) + source + explanations
            + _near_distance_note(stats) + _evaluation_set_note(stats, counts)
            + _removed_examples_html(data.removed_examples, counts))
    return _section("duplicates", title, body)


def gallery_section(data: CorpusData) -> str:
    title = "Sample gallery"
    gallery = data.gallery
    if isinstance(gallery, Unavailable):
        return _section("gallery", title, _not_available("Sample gallery", gallery.reason))
    intro = _paragraph(
        f"{len(gallery.samples)} written samples drawn with seed {GALLERY_SEED} from shard(s) "
        f"{', '.join(gallery.shards)}: the same corpus shows the same samples.")
    thumbnails = "".join(
        _thumbnail(sample.picture, ["queries: " + (", ".join(sample.queries) or "–")])
        for sample in gallery.samples)
    body = intro + f'<div class="thumbs">{thumbnails}</div>'
    if gallery.problems:
        body += _not_available("Some images", "; ".join(_listed(gallery.problems)))
    return _section("gallery", title, body)


def guarded(section, title: str, *inputs) -> str:
    """The section's HTML, or a "not available" note naming the field it could not use.

    The inputs are files other programs write (evaluate.py's schema grows in parallel): a
    field of an unexpected type must cost one section, not the whole page."""
    try:
        return section(*inputs)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        return _not_available(title, f"unexpected input format: {type(err).__name__}: {err}")


def corpus_section(data: CorpusData) -> str:
    sections = [(headline_section, "Headline numbers"), (stages_section, "Stage counts"),
                (query_counts_section, "Per-query counts"), (failures_section, "Failures"),
                (languages_section, "Language mix"), (image_sizes_section, "Image sizes"),
                (duplicates_section, "Duplicates"), (gallery_section, "Sample gallery")]
    parts = [guarded(section, title, data) for section, title in sections]
    intro = f'<p class="path">{html.escape(data.folder)}</p>'
    return _section("corpus", "Corpus", intro + "".join(parts), level=2)


# ---------------------------------------------------------------------- training section


def _series(records: list[dict], name: str) -> tuple[list, list]:
    pairs = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def training_section(run: str | None, records: list[dict] | Unavailable | None,
                     batch_size: int | None) -> str:
    title = "Training run"
    if run is None:
        return _section("training", title, _not_available("Training run", "no --run given"),
                        level=2)
    intro = f'<p class="path">{html.escape(run)}</p>'
    if isinstance(records, Unavailable):
        return _section("training", title,
                        intro + _not_available("Training metrics", records.reason), level=2)
    last = records[-1]
    steps, losses = _series(records, "loss")
    rates = _series(records, "samples_per_s")[1]
    skipped = last.get("skipped") or {}
    items = [("last step", last["step"]), ("epochs", (last.get("epoch", 0) or 0) + 1),
             ("first loss", losses[0] if losses else None),
             ("last loss", losses[-1] if losses else None),
             ("lowest loss", min(losses) if losses else None),
             ("median samples/s", sorted(rates)[len(rates) // 2] if rates else None),
             ("samples skipped", sum(skipped.values()))]
    body = intro + _cards(items)
    if skipped:
        body += _paragraph("Skipped by the loader: " + ", ".join(
            f"{reason} {n:,}" for reason, n in sorted(skipped.items())))
    samples_seen = _samples_seen(records, batch_size)
    if losses:
        panels = 2 if samples_seen else 1
        figure, axes = new_figure(5.0 * panels if panels > 1 else 7.5, 3.6, ncols=panels)
        by_step = axes[0] if panels > 1 else axes
        by_step.plot(steps, losses, color="#4c72b0")
        for boundary in _epoch_starts(records):
            by_step.axvline(boundary, color="#cccccc", linestyle=":", zorder=0)
        by_step.set_xlabel("step")
        by_step.set_ylabel("contrastive loss")
        by_step.set_title("loss")
        if samples_seen:
            seen_x, seen_loss = samples_seen
            axes[1].plot(seen_x, seen_loss, color="#4c72b0")
            axes[1].set_xlabel("samples seen")
            axes[1].set_title("loss vs samples seen")
        body += figure_to_img(figure, "loss curve")
        if not samples_seen:
            body += _not_available("Loss vs samples seen", "neither the metrics nor a local "
                                   "checkpoint give the batch size")
        elif batch_size:
            body += _paragraph(f"Samples seen = step × {batch_size} (the checkpoint's per-rank "
                               "batch; multiply by the ranks of a multi-GPU run).")
    if rates:
        figure, axes = new_figure(7.5, 3.4)
        rate_steps = _series(records, "samples_per_s")[0]
        axes.plot(rate_steps, rates, color="#55a868", label="samples/s")
        axes.set_xlabel("step")
        axes.set_ylabel("samples/s")
        axes.set_ylim(bottom=0)
        axes.set_title("throughput (since the previous logged step)")
        fraction_steps, fractions = _series(records, "data_fraction")
        if fractions:
            waiting = axes.twinx()
            waiting.plot(fraction_steps, fractions, color="#8c8c8c", linestyle=":",
                         label="share of time waiting for data")
            waiting.set_ylabel("waiting for data")
            waiting.set_ylim(0, 1)
            lines = axes.get_lines() + waiting.get_lines()
            axes.legend(lines, [line.get_label() for line in lines], loc="lower right")
        body += figure_to_img(figure, "throughput")
    else:
        body += _not_available("Throughput", "no samples_per_s in the metrics")
    lr_steps, lrs = _series(records, "lr")
    scale_steps, scales = _series(records, "logit_scale")
    if lrs or scales:
        panels = bool(lrs) + bool(scales)
        figure, axes = new_figure(5.0 * panels if panels > 1 else 7.5, 3.2, ncols=panels)
        axes = list(axes) if panels > 1 else [axes]
        if lrs:
            axes[0].plot(lr_steps, lrs, color="#dd8452")
            axes[0].set_xlabel("step")
            axes[0].set_title("learning rate")
        if scales:
            axes[-1].plot(scale_steps, scales, color="#8172b3")
            axes[-1].set_xlabel("step")
            axes[-1].set_title("logit scale (1 / temperature)")
        body += figure_to_img(figure, "learning rate and temperature")
    else:
        body += _not_available("Learning rate", "not logged")
    return _section("training", title, body, level=2)


def _epoch_starts(records: list[dict]) -> list:
    """The first logged step of each epoch after the first (dotted lines on the loss plot)."""
    starts = []
    for before, after in zip(records, records[1:]):
        if after.get("epoch") != before.get("epoch"):
            starts.append(after["step"])
    return starts


def _samples_seen(records: list[dict], batch_size: int | None) -> tuple[list, list] | None:
    logged = [(r["samples"], r["loss"]) for r in records
              if isinstance(r.get("samples"), (int, float)) and isinstance(r.get("loss"),
                                                                          (int, float))]
    if logged:
        return [p[0] for p in logged], [p[1] for p in logged]
    if not batch_size:
        return None
    steps, losses = _series(records, "loss")
    return [s * batch_size for s in steps], losses


# ---------------------------------------------------------------------- evaluation section


def _best_template_set(by_templates: dict) -> str | None:
    scored = [(name, result) for name, result in by_templates.items()
              if isinstance(result, dict) and isinstance(result.get("top1"), (int, float))]
    if not scored:
        return None
    return max(scored, key=lambda item: (item[1]["top1"], item[0]))[0]


def zero_shot_section(zero_shot: dict | None) -> str:
    title = "Zero-shot classification"
    if not isinstance(zero_shot, dict):
        return _section("zero-shot", title, _not_available("Zero-shot", "not in the evaluation"))
    by_templates = zero_shot.get("by_templates") or {}
    classes = list(zero_shot.get("classes") or [])
    chance = zero_shot.get("chance")
    listed = ", ".join(classes[:MAX_CLASSES_LISTED]) + (
        f", … ({len(classes) - MAX_CLASSES_LISTED} more)" if len(classes) > MAX_CLASSES_LISTED
        else "")
    facts = _paragraph(
        f"Dataset {zero_shot.get('dataset', '?')}: {_fmt(zero_shot.get('images'))} images, "
        f"{len(classes)} classes ({listed}).")
    if not by_templates:
        return _section("zero-shot", title,
                        facts + _not_available("Zero-shot results", "no template sets"))
    best = _best_template_set(by_templates)
    rows = []
    for name, result in by_templates.items():
        top1 = result.get("top1")
        rows.append([name + (" (best)" if name == best else ""), result.get("templates"),
                     top1, result.get("top5"), chance,
                     f"{top1 / chance:.1f}×" if chance and isinstance(top1, (int, float))
                     else "–"])
    body = facts + _table(["template set", "templates", "top-1", "top-5", "chance",
                           "top-1 / chance"], rows)
    with_per_class = {name: r["per_class"] for name, r in by_templates.items()
                      if isinstance(r.get("per_class"), dict) and r["per_class"]}
    if with_per_class:
        body += _per_class_plot(with_per_class, classes, chance, best)
    else:
        body += _not_available("Per-class accuracy", "no template set has per_class")
    confusion_source = best if by_templates.get(best, {}).get("confusion") else next(
        (name for name, r in by_templates.items() if r.get("confusion")), None)
    if confusion_source:
        body += _confusion_plot(by_templates[confusion_source]["confusion"], classes,
                                confusion_source)
    else:
        body += _not_available("Confusion matrix", "no template set has a confusion matrix")
    return _section("zero-shot", title, body)


def _per_class_plot(per_class: dict, classes: list[str], chance, best: str | None) -> str:
    names = classes or sorted({c for values in per_class.values() for c in values})
    reference = per_class.get(best) or next(iter(per_class.values()))
    names = sorted(names, key=lambda c: (-(reference.get(c) or 0), c))
    sets = list(per_class)
    width = 0.8 / len(sets)
    figure, axes = new_figure(min(max(7.5, 0.35 * len(names) * len(sets) + 2), 20), 4.0)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#8172b3", "#c44e52"]
    for i, name in enumerate(sets):
        xs = [j + (i - (len(sets) - 1) / 2) * width for j in range(len(names))]
        axes.bar(xs, [per_class[name].get(c, 0) or 0 for c in names], width=width,
                 color=palette[i % len(palette)], label=name)
    if isinstance(chance, (int, float)):
        axes.axhline(chance, color="#8c8c8c", linestyle="--", label="chance")
    if len(names) <= MAX_CLASSES_LABELLED:
        axes.set_xticks(range(len(names)), names, rotation=60, ha="right",
                        fontsize=8 if len(names) > 20 else 10)
    else:
        axes.set_xticks([])
        axes.set_xlabel(f"{len(names)} classes, best first")
    axes.set_ylim(0, 1)
    axes.set_ylabel("top-1 accuracy")
    axes.set_title("zero-shot accuracy per class")
    axes.legend(title="templates")
    return figure_to_img(figure, "per-class accuracy")


def _confusion_plot(confusion: list[list], classes: list[str], source: str) -> str:
    size = len(confusion)
    labels = classes if len(classes) == size else [str(i) for i in range(size)]
    totals = [sum(row) or 1 for row in confusion]
    shares = [[value / total for value in row] for row, total in zip(confusion, totals)]
    side = min(max(4.5, 0.45 * size + 2.0), 16)
    figure, axes = new_figure(side + 1.0, side)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    if size <= MAX_CLASSES_LABELLED:
        font = 8 if size > 20 else 10
        axes.set_xticks(range(size), labels, rotation=60, ha="right", fontsize=font)
        axes.set_yticks(range(size), labels, fontsize=font)
    if size <= MAX_CONFUSION_ANNOTATED:
        for i, row in enumerate(confusion):
            for j, value in enumerate(row):
                if value:
                    axes.text(j, i, str(value), ha="center", va="center", fontsize=8,
                              color="white" if shares[i][j] > 0.5 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"confusion matrix ({source} templates)")
    return figure_to_img(figure, "confusion matrix")


def retrieval_section(retrieval: dict | None) -> str:
    title = "Image–text retrieval"
    if not isinstance(retrieval, dict):
        return _section("retrieval", title, _not_available("Retrieval", "not in the evaluation"))
    directions = [d for d in ("image_to_text", "text_to_image") if isinstance(retrieval.get(d),
                                                                              dict)]
    if not directions:
        return _section("retrieval", title, _not_available("Retrieval", "no recall results"))
    ks = sorted({k for d in directions for k in retrieval[d]},
                key=lambda k: (int(k.split("@")[-1]) if k.split("@")[-1].isdigit() else 0, k))
    rows = [[d.replace("_", " "), *(retrieval[d].get(k) for k in ks)] for d in directions]
    facts = _paragraph(f"{_fmt(retrieval.get('pairs'))} image–caption pairs from "
                       f"{retrieval.get('shards', '?')}; chance R@1 is 1 / pairs.")
    return _section("retrieval", title, facts + _table(["direction", *ks], rows))


def linear_probe_section(probe: dict | None) -> str:
    title = "Linear probe"
    if not isinstance(probe, dict):
        return _section("linear-probe", title,
                        _not_available("Linear probe", "not in the evaluation"))
    split = probe.get("split") or {}
    rows = [["train / val / test images", " / ".join(_fmt(split.get(k))
                                                     for k in ("train", "val", "test"))],
            ["best C (by validation accuracy)", probe.get("best_C")],
            ["validation accuracy at best C", probe.get("val_accuracy")],
            ["test accuracy at best C", probe.get("test_accuracy")]]
    body = _table(["", "value"], rows)
    sweep = [p for p in probe.get("sweep") or []
             if isinstance(p.get("C"), (int, float)) and p["C"] > 0
             and isinstance(p.get("val_accuracy"), (int, float))]
    if sweep:
        sweep = sorted(sweep, key=lambda p: p["C"])
        figure, axes = new_figure(6.5, 3.4)
        axes.plot([p["C"] for p in sweep], [p["val_accuracy"] for p in sweep], marker="o",
                  color="#4c72b0", label="validation")
        if isinstance(probe.get("best_C"), (int, float)):
            axes.axvline(probe["best_C"], color="#c44e52", linestyle="--", label="best C")
        if isinstance(probe.get("test_accuracy"), (int, float)):
            axes.axhline(probe["test_accuracy"], color="#55a868", linestyle=":",
                         label="test at best C")
        axes.set_xscale("log")
        axes.set_xlabel("C (inverse regularisation, log)")
        axes.set_ylabel("accuracy")
        axes.set_title("logistic-regression sweep")
        axes.legend()
        body += figure_to_img(figure, "linear-probe sweep")
    else:
        body += _not_available("Sweep", "no C sweep in the evaluation")
    k_shot = {int(k): v for k, v in (probe.get("k_shot") or {}).items()
              if str(k).isdigit() and isinstance(v, (int, float))}
    if k_shot:
        ks = sorted(k_shot)
        figure, axes = new_figure(6.5, 3.4)
        axes.plot(ks, [k_shot[k] for k in ks], marker="o", color="#dd8452", label="k-shot")
        if isinstance(probe.get("test_accuracy"), (int, float)):
            axes.axhline(probe["test_accuracy"], color="#55a868", linestyle=":",
                         label="all training images")
        axes.set_xscale("log", base=2)
        axes.set_xticks(ks, [str(k) for k in ks])
        axes.set_xlabel("training images per class")
        axes.set_ylabel("test accuracy")
        axes.set_title("few-shot linear probe")
        axes.legend()
        body += figure_to_img(figure, "k-shot curve")
    else:
        body += _not_available("k-shot curve", "no k_shot results")
    if probe.get("k_shot_skipped"):
        body += _paragraph("k-shot sizes skipped: "
                           + ", ".join(str(k) for k in probe["k_shot_skipped"]))
    return _section("linear-probe", title, body)


def evaluation_section(path: str | None, evaluation: dict | Unavailable | None) -> str:
    title = "Evaluation"
    if path is None:
        return _section("evaluation", title,
                        _not_available("Evaluation", "no --eval given and no eval.json in the run"),
                        level=2)
    intro = f'<p class="path">{html.escape(path)}</p>'
    if isinstance(evaluation, Unavailable):
        return _section("evaluation", title,
                        intro + _not_available("Evaluation", evaluation.reason), level=2)
    if not isinstance(evaluation, dict):
        return _section("evaluation", title,
                        intro + _not_available("Evaluation", "not a JSON object"), level=2)
    facts = _paragraph(f"Checkpoint {evaluation.get('checkpoint', '?')}, model "
                       f"{evaluation.get('model', '?')}, step {_fmt(evaluation.get('step'))}.")
    body = (intro + facts
            + guarded(zero_shot_section, "Zero-shot", evaluation.get("zero_shot"))
            + guarded(retrieval_section, "Retrieval", evaluation.get("retrieval"))
            + guarded(linear_probe_section, "Linear probe", evaluation.get("linear_probe")))
    return _section("evaluation", title, body, level=2)


# ------------------------------------------------------------------------ ablation section

ABLATION_METRICS = ("top1", "head_top1", "tail_top1")


def ablation_section(path: str | None, ablation: dict | Unavailable | None) -> str:
    title = "Balancing ablation"
    if path is None:
        return ""  # an optional extra: no empty section when it was not asked for
    intro = f'<p class="path">{html.escape(path)}</p>'
    if isinstance(ablation, Unavailable):
        return _section("ablation", title, intro + _not_available("Ablation", ablation.reason),
                        level=2)
    arms = ablation.get("arms") if isinstance(ablation, dict) else None
    if not isinstance(arms, dict) or not arms:
        return _section("ablation", title, intro + _not_available("Ablation", "no arms"),
                        level=2)
    names = list(arms)
    metrics = [m for m in ABLATION_METRICS
               if any(isinstance(arms[a].get(m), (int, float)) for a in names)]
    body = intro
    if metrics:
        figure, axes = new_figure(6.5, 3.6)
        width = 0.8 / len(names)
        palette = ["#4c72b0", "#dd8452", "#55a868", "#8172b3"]
        for i, arm in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
            axes.bar(xs, [arms[arm].get(m) or 0 for m in metrics], width=width,
                     color=palette[i % len(palette)], label=arm)
        axes.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics])
        axes.set_ylim(0, 1)
        axes.set_ylabel("zero-shot top-1")
        axes.set_title("balanced vs unbalanced training data")
        axes.legend()
        body += figure_to_img(figure, "ablation")
    columns = ["samples", *metrics]
    rows = [[arm, *(arms[arm].get(c) for c in columns)] for arm in names]
    body += _table(["arm", *columns], rows)
    for key, label in (("head_classes", "Head classes"), ("tail_classes", "Tail classes")):
        if ablation.get(key):
            body += _paragraph(f"{label}: " + ", ".join(str(c) for c in ablation[key]))
    return _section("ablation", title, body, level=2)


# ------------------------------------------------------------------------------ the page

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #4c72b0; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.6em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.8em 0; }
img { max-width: 100%; height: auto; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 0.8em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 0.9em; min-width: 8em; }
.card .value { font-size: 1.4em; font-weight: 600; }
.card .label { color: #666; font-size: 0.85em; }
.na { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.7em; border-radius: 4px; }
.warn { color: #a94442; background: #f2dede; padding: 0.4em 0.7em; border-radius: 4px; }
.path { color: #666; font-family: monospace; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.6em; margin: 0.6em 0; align-items: flex-start; }
.thumbs.group { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em; }
figure.thumb { width: 140px; margin: 0; font-size: 0.75em; overflow-wrap: anywhere; }
figure.thumb img { display: block; max-width: 128px; max-height: 128px; }
"""


def render_report(config: ReportConfig) -> str:
    """The page's HTML."""
    corpus = load_corpus(config.corpus)
    records = load_metrics(config.run) if config.run else None
    batch_size = None
    if isinstance(records, list) and not any("samples" in r for r in records):
        batch_size = batch_size_from_run_file(config.run)
    eval_path = config.eval_json
    if eval_path is None and config.run:
        default_eval = storage.join(config.run, EVAL_FILE)
        eval_path = default_eval if _exists(default_eval) else None
    evaluation = _read_json(eval_path, "evaluation") if eval_path else None
    ablation = (_read_json(config.ablation_json, "ablation") if config.ablation_json
                else None)

    sections = [corpus_section(corpus),
                guarded(training_section, "Training run", config.run, records, batch_size),
                evaluation_section(eval_path, evaluation),
                guarded(ablation_section, "Ablation", config.ablation_json, ablation)]
    links = [("corpus", "Corpus"), ("training", "Training"), ("evaluation", "Evaluation")]
    if config.ablation_json:
        links.append(("ablation", "Ablation"))
    nav = "<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in links) + "</nav>"
    inputs = [("corpus", config.corpus), ("run", config.run), ("evaluation", eval_path),
              ("ablation", config.ablation_json)]
    described = "; ".join(f"{name}: {value}" for name, value in inputs if value)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>openwit report: {html.escape(config.corpus)}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>openwit report</h1><p class=\"path\">{html.escape(described)}</p>{nav}"
            + "".join(sections) + "</body></html>\n")


def default_output(config: ReportConfig) -> str:
    return config.output or storage.join(config.corpus, REPORT_FILE)


def write_report(config: ReportConfig) -> str:
    """Writes the page (atomically, through storage) and returns its path."""
    path = default_output(config)
    page = render_report(config)
    storage.write_bytes_atomic(path, page.encode("utf-8"))
    return path


# ------------------------------------------------------------------------------ the CLI


def add_report_flags(parser) -> None:
    parser.add_argument("corpus", help="a corpus folder (openwit build/download/curate output)")
    parser.add_argument("--run", default=None, help="a training run folder (openwit train "
                        "--output): loss, throughput, learning rate from metrics.jsonl")
    parser.add_argument("--eval", dest="eval_json", default=None,
                        help="an evaluation JSON (default: RUN/eval.json when present)")
    parser.add_argument("--ablation", dest="ablation_json", default=None,
                        help="a balanced-vs-unbalanced ablation JSON")
    add_output_flag(parser, help=f"the HTML file (default: CORPUS/{REPORT_FILE})")


def _named_input_exists(path: str) -> bool:
    """A file, or a folder (for s3:// and gs://: any object under it)."""
    if "://" not in path:
        return os.path.exists(path)
    return storage.exists(path) or bool(storage.glob(storage.join(path, "*")))


def report_config(args) -> ReportConfig:
    """The parsed flags -> ReportConfig. Inputs named on the command line must exist (a
    missing section of an existing corpus is reported as not available, not as an error)."""
    for flag, path in (("corpus folder", args.corpus), ("--run", args.run),
                       ("--eval", args.eval_json), ("--ablation", args.ablation_json)):
        if path is not None and not _named_input_exists(path):
            raise ConfigError(f"{flag} {path!r} does not exist")
    return ReportConfig(corpus=args.corpus, run=args.run, eval_json=args.eval_json,
                        ablation_json=args.ablation_json, output=args.output)


def run_report(config: ReportConfig) -> tuple[str, float]:
    """Writes the report; returns its path and the seconds it took."""
    started = time.monotonic()
    path = write_report(config)
    return path, time.monotonic() - started
