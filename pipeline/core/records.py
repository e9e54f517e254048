"""The records that flow between stages, and the one shape every dropped candidate takes.

A candidate is a plain dict (cheap to pickle between Beam workers, easy to extend by later
stages):

    key        deterministic sample id: sha1(url + "\\t" + raw caption), 16 hex chars, no dot
    url        the image URL as given
    caption    the caption (normalised after the normalise stage)
    query_ids  sorted ids of the matched queries (after the match stage)
    keep_probability          MetaCLIP's sampling probability (after the balance stage)
    language, language_prob   (after the language stage)
    queries    sorted matched query strings (added when curation ends)

After download a sample also carries `jpg` (bytes), width, height, original_width,
original_height, sha256 (of the downloaded bytes, as img2dataset computes it), phash (the
perceptual hash of the whole picture), phash_crops (those of its centre crops) and colours
(the colour of each of those views, whole picture first).

A failure is a dict with the fields of `layout.FAILURE_SCHEMA`, made by `failure()` and by
nothing else; every stage that drops a candidate emits one, so the failures folder accounts
for every input row.
"""

from __future__ import annotations

import hashlib
import typing

import apache_beam as beam

KEY_HEX_CHARS = 16


def sample_key(url: str, caption: str) -> str:
    digest = hashlib.sha1(f"{url}\t{caption}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:KEY_HEX_CHARS]


def stable_hash64(*parts: str) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Stage:
    READ = "read"
    NORMALISE = "normalise"
    MATCH = "match"
    DEDUP_URL = "dedup_url"
    BALANCE = "balance"
    LANGUAGE = "language"
    DOWNLOAD = "download"
    DEDUP_IMAGE = "dedup_image"
    CAP = "cap"

    TEXT = (READ, NORMALISE, MATCH, DEDUP_URL, BALANCE, LANGUAGE)  # the text half: `openwit curate`
    IMAGES = (DOWNLOAD, DEDUP_IMAGE, CAP)  # the image half: `openwit download`
    ORDER = TEXT + IMAGES


class Reason:
    """Every reason a candidate can be dropped for. Stable strings: users filter on them."""

    # read
    MISSING_URL = "missing_url"
    INVALID_URL = "invalid_url"
    MALFORMED_ROW = "malformed_row"
    # normalise
    EMPTY_CAPTION = "empty_caption"
    CAPTION_TOO_LONG = "caption_too_long"
    # match
    NO_QUERY_MATCH = "no_query_match"
    # language
    LANGUAGE_NOT_WANTED = "language_not_wanted"
    LANGUAGE_UNCERTAIN = "language_uncertain"
    LANGUAGE_UNDETECTABLE = "language_undetectable"
    # dedup, balance and the exact cap
    DUPLICATE_URL = "duplicate_url"
    BALANCED_OUT = "balanced_out"
    OVER_QUERY_CAP = "over_query_cap"
    DUPLICATE_IMAGE = "duplicate_image"
    NEAR_DUPLICATE = "near_duplicate"  # detail: the distance and the key kept instead
    EVAL_DUPLICATE = "eval_duplicate"  # detail: the distance and the evaluation image
    # download: policy, transport, HTTP
    URL_BLOCKED = "url_blocked"
    REDIRECT_BLOCKED = "redirect_blocked"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    HTTP_NOT_FOUND = "http_404"
    HTTP_RATE_LIMITED = "http_429"
    HTTP_SERVER_ERROR = "http_5xx"
    HTTP_CLIENT_ERROR = "http_4xx"
    HTTP_OTHER = "http_other_status"
    BODY_TOO_LARGE = "body_too_large"
    OPTED_OUT = "opted_out"  # detail: `opt_out_detail`, the directives first
    ROBOTS_UNREACHABLE = "robots_txt_unreachable"  # RFC 9309: an unreachable robots.txt disallows
    HOST_BACKED_OFF = "host_backed_off"  # the host kept answering 429/503 through its cool-downs
    # download: image content
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"
    ASPECT_RATIO = "aspect_ratio_too_large"
    DECODE_ERROR = "decode_error"


def in_global_window(value):
    """A value emitted from `finish_bundle`, which has no element to take a window from;
    these pipelines are batch jobs in the global window."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.windowed_value import WindowedValue

    return WindowedValue(value, 0, [GlobalWindow()])


def failure(candidate: dict, stage: str, reason: str, detail: str = "") -> dict:
    """The failure record of a candidate (any dict with key, url and caption; a stage that
    only knows the key passes {"key": key} and the shard writer fills in url and caption)."""
    return {
        "key": candidate.get("key"),
        "url": candidate.get("url"),
        "caption": candidate.get("caption"),
        "stage": stage,
        "reason": reason,
        "detail": detail[:500],
        "phash": candidate.get("phash"),
        "phash_crops": candidate.get("phash_crops"),
        "colours": candidate.get("colours"),
    }


def hashes_of(record: dict) -> tuple[str, ...]:
    """A sample's or failure record's perceptual hashes: the whole picture's, then its crops'."""
    return (record["phash"], *(record.get("phash_crops") or ()))


def colours_of(record: dict) -> tuple[str, ...] | None:
    """The colour of each of a record's hash views, or None when the record has none (made
    before openwit kept them: its sample is then compared by hash alone)."""
    colours = record.get("colours")
    return tuple(colours) if colours else None


# An opt-out's detail names what opted out first ("noai, noimageai" or "robots.txt"), then the
# evidence in parentheses, so that stats can count opt-outs by directive from the records.
ROBOTS_TXT_DIRECTIVE = "robots.txt"


def opt_out_detail(directives, evidence: str) -> str:
    return f"{', '.join(directives)} ({evidence})"


def opt_out_directives(detail: str) -> list[str]:
    """The directives an `opt_out_detail` names."""
    named = detail.split(" (", 1)[0]
    return [directive.strip() for directive in named.split(",") if directive.strip()]


KEPT = "kept"
FAILED = "failed"


class StageResult(typing.NamedTuple):
    """What every filtering stage returns: the survivors and one failure record per drop."""

    kept: beam.PCollection
    failed: beam.PCollection
