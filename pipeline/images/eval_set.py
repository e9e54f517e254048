"""The hashes of an evaluation set, which `--exclude-images` keeps out of a corpus.

    image folders, WebDataset .tar shards, hash lists -> HashList -> `openwit hashes`' file

Images are hashed as the download stage hashes a corpus image (`ImageHasher.of_bytes`), so a
corpus copy of an evaluation image is within a few bits of it. Shard members are read from
the tar stream into memory, never extracted; every file and member has a size limit. A file
that is not an image, or is too big, is counted with its reason, never a crash.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile

from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.layout import HASH_LIST_FORMAT
from openwit.pipeline.images.config import add_hash_flags
from openwit.pipeline.images.image_hash import DECODER_ERRORS, ImageHasher, is_hash

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_IMAGE_BYTES = 50 * 1024 * 1024


@dataclasses.dataclass
class HashList:
    """(hashes, source) per image, its hashes the whole picture's first, then its crops' (the
    views of `ImageHasher`); (source, reason) per file that could not be hashed."""

    kind: str
    size: int
    hashes: list[tuple[tuple[str, ...], str]] = dataclasses.field(default_factory=list)
    unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, hasher: ImageHasher, source: str, data: bytes) -> None:
        from PIL import Image

        try:
            self.hashes.append((hasher.of_bytes(data), source))
        except Image.DecompressionBombError:
            self.unreadable.append((source, "image_too_large"))
        except DECODER_ERRORS as err:
            self.unreadable.append((source, f"not_an_image: {type(err).__name__}"))

    def extend(self, other: "HashList") -> None:
        if (other.kind, other.size) != (self.kind, self.size):
            raise ConfigError(f"a hash list of {other.kind} {other.size}x{other.size} cannot "
                              f"exclude from a corpus hashed with {self.kind} "
                              f"{self.size}x{self.size}; run `openwit hashes` again with "
                              f"--hash-kind {self.kind} --hash-size {self.size}")
        self.hashes.extend(other.hashes)
        self.unreadable.extend(other.unreadable)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _add_shard(hashes: HashList, hasher: ImageHasher, path: str) -> None:
    try:
        with tarfile.open(path, mode="r|*") as stream:  # a stream: members in order, no seek
            for member in stream:
                source = f"{path}:{member.name}"
                if not member.isfile() or not _is_image_name(member.name):
                    continue
                if member.size > MAX_IMAGE_BYTES:
                    hashes.unreadable.append((source, "image_too_large"))
                    continue
                handle = stream.extractfile(member)
                hashes.add(hasher, source, handle.read(MAX_IMAGE_BYTES + 1))
    except (tarfile.TarError, OSError, EOFError) as err:
        hashes.unreadable.append((path, f"broken_shard: {type(err).__name__}: {err}"))


def _add_file(hashes: HashList, hasher: ImageHasher, path: str) -> None:
    try:
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            hashes.unreadable.append((path, "image_too_large"))
            return
        with open(path, "rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as err:
        hashes.unreadable.append((path, f"unreadable: {type(err).__name__}"))
        return
    hashes.add(hasher, path, data)


def hash_paths(paths, hasher: ImageHasher) -> HashList:
    """Every image under `paths`: image files, .tar shards, folders of either (walked in
    sorted order), and hash lists (.json) written by `write_hash_list`."""
    hashes = HashList(hasher.kind, hasher.size)
    for path in paths:
        if os.path.isdir(path):
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                for name in sorted(files):
                    _add_path(hashes, hasher, os.path.join(folder, name), walked=True)
        elif os.path.isfile(path):
            _add_path(hashes, hasher, path, walked=False)
        else:
            raise ConfigError(f"{path!r} is neither a file nor a folder")
    return hashes


def _add_path(hashes: HashList, hasher: ImageHasher, path: str, walked: bool) -> None:
    lower = path.lower()
    if lower.endswith(".tar"):
        _add_shard(hashes, hasher, path)
    elif lower.endswith(".json") and not walked:
        hashes.extend(read_hash_list(path))
    elif _is_image_name(path):
        _add_file(hashes, hasher, path)
    elif not walked:
        raise ConfigError(f"{path!r} is not an image, a .tar shard or a hash list (.json)")


def write_hash_list(path: str, hashes: HashList) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"format": HASH_LIST_FORMAT, "kind": hashes.kind, "size": hashes.size,
                   "hashes": [[list(views), source] for views, source in hashes.hashes],
                   "unreadable": [list(pair) for pair in hashes.unreadable]}, handle)
        handle.write("\n")


def read_hash_list(path: str) -> HashList:
    """A file `write_hash_list` wrote; anything else is a ConfigError naming the problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a hash list ({type(err).__name__})") from None
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith(
            HASH_LIST_FORMAT.split("/")[0] + "/"):
        raise ConfigError(f"{path}: not a hash list of `openwit hashes`")
    if data["format"] != HASH_LIST_FORMAT:
        raise ConfigError(f"{path}: a hash list of an older openwit ({data['format']}); its "
                          "hashes are not comparable: run `openwit hashes` again")
    hasher = ImageHasher(str(data.get("kind")), data.get("size") if isinstance(
        data.get("size"), int) else 0)
    problem = hasher.validate()
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    pairs = data.get("hashes")
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], list) and p[0]
            and all(is_hash(value, hasher.hex_length) for value in p[0])
            and isinstance(p[1], str) for p in pairs):
        raise ConfigError(f"{path}: its hashes are not [[hash, ...], source] pairs of "
                          f"{hasher.hex_length} hex digits")
    unreadable = data.get("unreadable", [])
    unreadable = [tuple(map(str, p)) for p in unreadable if isinstance(p, list) and len(p) == 2]
    return HashList(hasher.kind, hasher.size, [(tuple(p[0]), p[1]) for p in pairs], unreadable)


# ------------------------------------------------------------------ `openwit hashes`


def add_hashes_flags(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image folders, image files, WebDataset .tar shards")
    parser.add_argument("--output", required=True, help="the hash list to write (.json)")
    add_hash_flags(parser)


def run_hashes(args) -> int:
    hasher = ImageHasher(args.hash_kind, args.hash_size, args.hash_views)
    problem = hasher.validate()
    if problem is not None:
        raise ConfigError(f"--hash-kind/--hash-size/--hash-views: {problem}")
    hashes = hash_paths(args.paths, hasher)
    write_hash_list(args.output, hashes)
    print(f"{len(hashes.hashes)} images hashed ({hasher.kind}, {hasher.bits} bits, "
          f"{hasher.views} views each), "
          f"{len(hashes.unreadable)} unreadable, into {args.output}")
    for source, reason in hashes.unreadable[:10]:
        print(f"  unreadable: {source}: {reason}")
    return 0
