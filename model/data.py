"""CLIP training input pipeline over openwit's WebDataset shards.

Shards are `NNNNNN.tar` files holding `KEY.jpg`, `KEY.txt` and `KEY.json` per sample, with a
`sizes.json` beside them mapping tar name -> sample count (open_clip's convention).

The pipeline is an explicit list of small generator stages (webdataset style), run inside each
DataLoader worker:

    shard urls -> open streams -> samples from tar -> shuffle buffer -> complete samples only
    -> decode (CPU) or validate bytes (GPU) -> batch + tokenize

Two decode paths share everything up to the decode stage:

* CPU: workers decode with PIL, using JPEG `draft()` to decode at a reduced DCT scale when the
  crop is at least twice the output size, and crop + resize in one `Image.resize(box=...)` call.
  Workers return uint8 batches; normalisation to float happens once per batch where the batch
  lands (the main process or the GPU), so no per-sample float tensors cross the worker queue.
* GPU: workers only check and forward the JPEG bytes (plus the crop box and flip they drew, so
  both paths draw the same random numbers); the main process decodes the batch with
  torchvision's batched nvjpeg and crops/resizes/flips/normalises with batched torch ops
  (`augment_batch`, which also runs on CPU tensors). A CUDA-stream prefetcher keeps one batch
  ahead of the trainer.

Corrupt data never stops training: each skipped sample or shard is counted by reason, the counts
ride back with the batches and `Loader.skipped` sums them. What happens besides counting is the
caller's error handler (`ignore_and_continue`, `log_and_continue`, `reraise`).

Remote shards (s3://, gs://) are read through openwit's storage layer like every other openwit
I/O (s3:// reads resume a dropped connection where it stopped; a shard that still cannot be read
is skipped and counted). The loader opens every shard itself rather than through webdataset's
`gopen`, so no webdataset global is touched; the one piece of process state is Beam's
`FileSystems` options, which each worker sets from `LoaderConfig.filesystem_flags` when its stream
starts (see `apply_filesystem_flags`). `register_webdataset_schemes` is there for code that reads
shards with `webdataset.WebDataset` directly.

Augmentation follows open_clip's training transform: RandomResizedCrop(scale 0.9-1.0, ratio
3/4-4/3, bicubic) then CLIP's mean/std. The CLIP paper used "a random square crop from resized
images" as its only augmentation and no flip; open_clip has no flip either, so `flip` is an
option, off by default.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import math
import posixpath
import random
import re
import tarfile
import zlib
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from openwit.pipeline.core import storage
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.layout import SIZES_FILE

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSION = "txt"
DECODE_CHOICES = ("auto", "cpu", "gpu")

# Reasons a sample or shard is skipped; the keys of `Loader.skipped`.
UNREADABLE_SHARD = "unreadable_shard"  # opening the shard failed
# The tar ends inside a member or has a corrupt header: the sample being read and the rest of
# that shard are lost (one count per shard).
TRUNCATED_TAR = "truncated_tar"
OVERSIZED_MEMBER = "oversized_member"  # a tar member larger than MAX_MEMBER_BYTES: skipped
MISSING_IMAGE = "missing_image"
MISSING_TEXT = "missing_text"
BAD_TEXT = "bad_text"  # caption is not UTF-8
BAD_IMAGE = "bad_image"  # undecodable, truncated or not an image
GPU_DECODE_FAILED = "gpu_decode_failed"  # nvjpeg and PIL both failed in the main process

# Errors that mean "this piece of data is bad", as opposed to bugs, which propagate.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)

Tokenizer = Callable[[list[str]], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Everything that decides which batches come out, except the tokenizer (a callable, passed
    to `make_loader` so that this config stays plain, loggable data)."""

    # Local paths, brace patterns (`out/shards/{000000..000003}.tar`), folders (every *.tar in
    # them), globs and s3:// or gs:// URLs; a sequence or a "::"-separated string mixes them.
    shards: str | Sequence[str]
    batch_size: int = 256
    workers: int = 4
    image_size: int = 224
    shuffle_buffer: int = 1000  # samples shuffled within each worker; 0 keeps tar order
    shard_shuffle: bool = True  # reshuffle the shard list every epoch (shard-list mode)
    seed: int = 0
    # Resampled mode draws shards with replacement forever and cuts epochs at `epoch_samples`
    # (else the total of sizes.json): open_clip's --dataset-resampled.
    resampled: bool = False
    epoch_samples: int | None = None
    decode: str = "auto"  # auto | cpu | gpu
    augment: bool = True  # False: centre square crop of the short side (evaluation)
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False  # horizontal flip with probability 0.5; CLIP and open_clip use none
    drop_last: bool = True  # equal batch sizes on every rank (contrastive all-gather needs it)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # Beam pipeline flags for the filesystems, e.g. ("--s3_endpoint_url", "http://...").
    # Applied in the main process and again in every worker, so they also reach workers that
    # were spawned rather than forked.
    filesystem_flags: tuple[str, ...] = ()
    prefetch_factor: int = 2  # batches in flight per worker

    def __post_init__(self):
        if self.decode not in DECODE_CHOICES:
            raise ValueError(f"decode must be one of {DECODE_CHOICES}, not {self.decode!r}")
        if self.batch_size < 1 or self.image_size < 1 or self.workers < 0:
            raise ValueError("batch_size and image_size must be positive, workers >= 0")


# --------------------------------------------------------------------------------------------
# Error handling


class SampleError(Exception):
    """A skipped sample or shard: handed to the error handler after it has been counted.

    Only `reason` is required so that DataLoader can rebuild it from its message when a worker
    re-raises it."""

    def __init__(self, reason: str, url: str = "", key: str | None = None,
                 cause: BaseException | None = None):
        super().__init__(reason, url, key, cause)
        self.reason, self.url, self.key, self.cause = reason, url, key, cause

    def __str__(self):
        where = self.url if self.key is None else f"{self.url} {self.key}"
        return f"{self.reason}: {where}: {self.cause!r}"


ErrorHandler = Callable[[SampleError], bool]  # True: carry on; False: end this worker's stream


def ignore_and_continue(error: SampleError) -> bool:
    return True


def log_and_continue(error: SampleError) -> bool:
    logger.warning("data: skipped %s", error)
    return True


def reraise(error: SampleError) -> bool:
    raise error from error.cause


# --------------------------------------------------------------------------------------------
# Shard listing and filesystems


@dataclasses.dataclass(frozen=True)
class ShardList:
    urls: tuple[str, ...]
    sizes: tuple[int | None, ...]  # from sizes.json; None where unknown

    @property
    def total_samples(self) -> int | None:
        if any(size is None for size in self.sizes):
            return None
        return sum(self.sizes)


def apply_filesystem_flags(flags: Sequence[str]) -> None:
    """Set Beam's FileSystems options (process-global in Beam) from pipeline flags.

    Does nothing for empty flags, so options a trainer set itself are left alone."""
    if not flags:
        return
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(PipelineOptions(list(flags)))


def _webdataset_gopen_via_beam(url, mode="rb", bufsize=8192, **kwargs):
    if mode != "rb":
        raise ValueError(f"only reading is supported through Beam here, not {mode!r}")
    return storage.open_read(url)


def register_webdataset_schemes(filesystem_flags: Sequence[str] = (),
                                schemes: Sequence[str] = ("s3", "gs")) -> None:
    """Let `webdataset.WebDataset` read s3:// and gs:// shards through Beam's FileSystems.

    webdataset 0.2 has no s3 scheme, and its gs scheme shells out to gsutil. This writes into
    webdataset's process-global `gopen_schemes`, so call it in the process that reads (for
    DataLoader workers: in `worker_init_fn`), not at import time. openwit's own loader does not
    need it: it opens shards itself."""
    import importlib

    # `webdataset.gopen` the attribute is the function; the module holds the scheme table.
    gopen_module = importlib.import_module("webdataset.gopen")
    apply_filesystem_flags(filesystem_flags)
    for scheme in schemes:
        gopen_module.gopen_schemes[scheme] = _webdataset_gopen_via_beam


def _expand_shard_spec(spec: str | Sequence[str]) -> list[str]:
    import braceexpand

    entries = spec.split("::") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for entry in entries:
        for pattern in braceexpand.braceexpand(entry):
            if any(char in pattern for char in "*?["):
                urls.extend(storage.glob(pattern))
            elif pattern.endswith(".tar") or pattern.endswith(".tar.gz"):
                urls.append(pattern)
            else:  # a folder: every tar directly inside it
                urls.extend(storage.glob(storage.join(pattern, "*.tar")))
    return urls


def list_shards(spec: str | Sequence[str], filesystem_flags: Sequence[str] = ()) -> ShardList:
    """Expand a shard spec and read sample counts from each folder's sizes.json.

    A folder without sizes.json, or a tar missing from it, gets size None with a warning: the
    loader then needs `epoch_samples` in resampled mode and cannot say `len()` exactly."""
    apply_filesystem_flags(filesystem_flags)
    urls = _expand_shard_spec(spec)
    if not urls:
        raise ConfigError(f"no shards match {spec!r}")
    sizes_by_folder: dict[str, dict | None] = {}
    sizes: list[int | None] = []
    for url in urls:
        folder, name = posixpath.split(url)
        if folder not in sizes_by_folder:
            sizes_path = storage.join(folder, SIZES_FILE) if folder else SIZES_FILE
            if storage.exists(sizes_path):
                sizes_by_folder[folder] = storage.read_json(sizes_path)
            else:
                logger.warning("data: no sizes.json in %s; sample counts unknown", folder or ".")
                sizes_by_folder[folder] = None
        folder_sizes = sizes_by_folder[folder]
        if folder_sizes is not None and name not in folder_sizes:
            logger.warning("data: %s is not in its folder's sizes.json", url)
        sizes.append(None if folder_sizes is None else folder_sizes.get(name))
    return ShardList(tuple(urls), tuple(sizes))


# --------------------------------------------------------------------------------------------
# Random crops (shared by the CPU and GPU paths, so both draw the same numbers)


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: tuple[float, float], ratio: tuple[float, float]
                            ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop covering `scale` of the area with aspect ratio in
    `ratio` (log-uniform): torchvision's RandomResizedCrop sampling, with a Python RNG."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = rng.randint(0, height - crop_height)
            left = rng.randint(0, width - crop_width)
            return left, top, left + crop_width, top + crop_height
    # Fallback: the whole image, clamped to the ratio range, centred (as torchvision does).
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width, crop_height = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_width, crop_height = int(round(height * max(ratio))), height
    else:
        crop_width, crop_height = width, height
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def centre_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The evaluation crop: resize the short side then centre-crop, done as one box."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


@dataclasses.dataclass(frozen=True)
class _Augmentation:
    augment: bool
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool

    def draw(self, width: int, height: int, rng: random.Random) -> tuple[tuple[int, ...], bool]:
        if not self.augment:
            return centre_square_box(width, height), False
        box = random_resized_crop_box(width, height, rng, self.scale, self.ratio)
        return box, self.flip and rng.random() < 0.5


# --------------------------------------------------------------------------------------------
# Batched augmentation as tensor ops (the GPU path; runs on any device)


def normalise_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
                    ) -> torch.Tensor:
    """uint8 [B,3,H,W] (0-255) -> float32 ((x/255 - mean) / std), in one batched pass."""
    scale = np.array([1 / (255 * s) for s in std], np.float32).reshape(1, 3, 1, 1)
    shift = np.array([m / s for m, s in zip(mean, std)], np.float32).reshape(1, 3, 1, 1)
    if images.device.type == "cpu":
        # numpy here is faster than torch on one core: it asks for huge pages for big arrays
        # (a fresh batch otherwise costs thousands of page faults) and runs no OpenMP
        # threads that would spin against the DataLoader workers for the same cores.
        normalised = np.multiply(images.numpy(), scale, dtype=np.float32)
        normalised -= shift
        return torch.from_numpy(normalised)
    return (images.to(torch.float32).mul_(torch.from_numpy(scale).to(images.device))
            .sub_(torch.from_numpy(shift).to(images.device)))


def augment_batch(images: Sequence[torch.Tensor] | torch.Tensor, boxes: torch.Tensor,
                  flips: torch.Tensor, output_size: int, mean: Sequence[float] = CLIP_MEAN,
                  std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Crop each uint8 [3,H,W] image to its box, resize to output_size (bicubic, antialiased
    when shrinking, like PIL), mirror where `flips`, normalise: float32 [B,3,S,S] on the images'
    device. Images may differ in size (a list) or share one (a [B,3,H,W] tensor).

    boxes: [B,4] (left, top, right, bottom) in source pixels; flips: bool [B]."""
    boxes = boxes.tolist()
    resized = []
    for image, (left, top, right, bottom) in zip(images, boxes):
        crop = image[None, :, int(top):int(bottom), int(left):int(right)].to(torch.float32)
        resized.append(torch.nn.functional.interpolate(
            crop, size=(output_size, output_size), mode="bicubic", align_corners=False,
            antialias=True))
    batch = torch.cat(resized).clamp_(0, 255)  # bicubic overshoots; PIL clamps to uint8 too
    flips = flips.to(batch.device, torch.bool).view(-1, 1, 1, 1)
    batch = torch.where(flips, batch.flip(-1), batch)
    scale = torch.tensor([1 / (255 * s) for s in std], device=batch.device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=batch.device).view(1, 3, 1, 1)
    return batch.mul_(scale).sub_(shift)


# --------------------------------------------------------------------------------------------
# What workers hand to the main process


@dataclasses.dataclass
class RawBatch:
    """One batch as a worker produces it. `size` 0: a batch that only carries skip counts."""

    size: int
    skipped: dict[str, int]
    tokens: torch.Tensor | None = None  # int64 [B, context]
    pixels: torch.Tensor | None = None  # CPU decode: uint8 [B,3,S,S]
    encoded: torch.Tensor | None = None  # GPU decode: every JPEG's bytes, concatenated
    encoded_lengths: list[int] | None = None
    boxes: torch.Tensor | None = None  # GPU decode: [B,4] crop boxes in source pixels
    flips: torch.Tensor | None = None  # GPU decode: bool [B]

    def pin_memory(self) -> "RawBatch":
        # Called by DataLoader(pin_memory=True) in its pinning thread. The JPEG bytes stay
        # pageable: nvjpeg reads them from host memory itself.
        pinned = dataclasses.replace(self)
        if self.tokens is not None:
            pinned.tokens = self.tokens.pin_memory()
        if self.pixels is not None:
            pinned.pixels = self.pixels.pin_memory()
        return pinned


@dataclasses.dataclass
class _Decoded:
    text: str
    pixels: np.ndarray | None = None  # CPU: uint8 [S,S,3]
    jpeg: bytes | None = None  # GPU: bytes nvjpeg can decode
    box: tuple[int, ...] | None = None
    flip: bool = False


# --------------------------------------------------------------------------------------------
# The per-worker stream: its identity and its stages


@dataclasses.dataclass(frozen=True)
class _EpochPlan:
    """What every worker of every rank needs to know to produce its part of one epoch."""

    shards: ShardList
    epoch: int
    rank: int
    world_size: int
    start_batch: int
    batches_per_rank: int | None  # resampled mode: exact; shard-list mode: None (until exhausted)
    samples_per_rank: int | None
    gpu_decode: bool


@dataclasses.dataclass
class _WorkerContext:
    config: LoaderConfig
    plan: _EpochPlan
    slot: int  # which interleaved batch sequence this worker produces (see _worker_slot)
    slots: int
    handler: ErrorHandler
    skipped: collections.Counter

    def seed_text(self, purpose: str) -> str:
        # Python's str seeding hashes with SHA-512: stable across processes and runs.
        return f"{purpose}/{self.config.seed}/{self.plan.epoch}/{self.plan.rank}/{self.slot}"

    def skip(self, reason: str, url: str, key: str | None, cause: BaseException | None) -> bool:
        """Count a skip, then ask the handler whether to go on."""
        self.skipped[reason] += 1
        return self.handler(SampleError(reason, url, key, cause))


def epoch_shard_urls(context: _WorkerContext) -> Iterator[str]:
    """Shard-list mode: one pass over this worker's share of the (per-epoch shuffled) list.

    Every worker shuffles the same list the same way, then takes rank, then slot, strides of it:
    the shares are disjoint and together cover every shard once per epoch."""
    urls = list(context.plan.shards.urls)
    if context.config.shard_shuffle:
        random.Random(f"shards/{context.config.seed}/{context.plan.epoch}").shuffle(urls)
    per_rank = urls[context.plan.rank::context.plan.world_size]
    yield from per_rank[context.slot::context.slots]


def resampled_shard_urls(context: _WorkerContext) -> Iterator[str]:
    """Resampled mode: shards drawn with replacement, forever; each worker its own seed."""
    rng = random.Random(context.seed_text("resample"))
    urls = context.plan.shards.urls
    while True:
        yield urls[rng.randrange(len(urls))]


def open_shard_streams(urls: Iterable[str], context: _WorkerContext
                       ) -> Iterator[tuple[str, BinaryIO]]:
    for url in urls:
        try:
            stream = storage.open_read(url)
        except OSError as error:  # Beam's BeamIOError is an OSError
            if not context.skip(UNREADABLE_SHARD, url, None, error):
                return
            continue
        try:
            yield url, stream
        finally:
            stream.close()


class TarFormatError(tarfile.ReadError):
    """A tar stream that ends inside a header or member, or has a corrupt header."""


_BLOCK = 512
_REGULAR_FILE_TYPES = (b"0", b"\0", b"7")
# Every untrusted byte has a limit: no sample file is this large, and a header that says
# otherwise (a GNU base-256 size of 2^80, a pax size of 10^13) must not become an allocation.
MAX_MEMBER_BYTES = 256 << 20
MAX_PAX_BYTES = 1 << 20
_DISCARD_CHUNK = 1 << 20


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    while len(data) < size:  # raw streams may return short reads before the end
        more = stream.read(size - len(data))
        if not more:
            raise TarFormatError(f"unexpected end of data ({len(data)} of {size} bytes)")
        data += more
    return data


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        if field[0] == 0xFF:
            raise TarFormatError("negative base-256 number in a tar header")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _discard(stream: BinaryIO, size: int) -> None:
    """Reads past `size` bytes without holding them."""
    while size > 0:
        chunk = stream.read(min(size, _DISCARD_CHUNK))
        if not chunk:
            raise TarFormatError(f"unexpected end of data ({size} bytes short)")
        size -= len(chunk)


def _pax_records(data: bytes) -> dict[str, str]:
    records, position = {}, 0
    while position < len(data) and data[position:position + 1] != b"\0":
        space = data.index(b" ", position)
        length = int(data[position:space])
        if length <= space - position or position + length > len(data):
            raise TarFormatError(f"pax record of length {length} at {position}")
        key, _, value = data[space + 1:position + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in a ustar / pax / GNU tar stream, read sequentially.

    Python's tarfile spends much of its time per member building TarInfo objects (pax headers
    included, which webdataset's TarWriter writes for every member); this reads the headers
    openwit's shards use directly, at a fraction of the cost. Raises TarFormatError (a
    tarfile.ReadError) on truncation, a bad header checksum or an impossible size. A regular
    member larger than MAX_MEMBER_BYTES is read past, never held, and yielded as (name, None).
    Nothing is ever written to disk."""
    long_name: str | None = None  # from a pax 'x' or GNU 'L' record: names the next member
    long_size: int | None = None
    while True:
        header = stream.read(_BLOCK)
        if not header or header == bytes(_BLOCK):
            return  # end of archive (two zero blocks, or a stream that simply ends there)
        if len(header) < _BLOCK:
            header += _read_exactly(stream, _BLOCK - len(header))
        stored_checksum = _octal(header[148:156])
        unsigned = sum(header[:148]) + 256 + sum(header[156:])
        if stored_checksum != unsigned:
            raise TarFormatError("bad tar header checksum")
        type_flag = header[156:157]
        size = long_size if long_size is not None else _octal(header[124:136])
        if size < 0:
            raise TarFormatError(f"negative member size {size}")
        padded = -(-size // _BLOCK) * _BLOCK
        if size > MAX_MEMBER_BYTES or (type_flag in (b"x", b"L") and size > MAX_PAX_BYTES):
            name = long_name or header[:100].split(b"\0", 1)[0].decode("utf-8",
                                                                       "surrogateescape")
            long_name = long_size = None
            _discard(stream, padded)
            if type_flag in _REGULAR_FILE_TYPES:
                yield name, None
            continue
        if type_flag in _REGULAR_FILE_TYPES:
            name = long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = header[345:500].split(b"\0", 1)[0]
                if header[257:263] == b"ustar\x00" and prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            long_name = long_size = None
            data = _read_exactly(stream, padded)
            yield name, data[:size] if padded != size else data
        elif type_flag in (b"x", b"L"):
            data = _read_exactly(stream, padded)[:size]
            if type_flag == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                records = _pax_records(data)
                long_name = records.get("path", long_name)
                long_size = int(records["size"]) if "size" in records else long_size
                if long_size is not None and long_size < 0:
                    raise TarFormatError(f"negative pax size {long_size}")
        else:  # directories, links, pax globals, GNU long link names: nothing to keep
            _read_exactly(stream, padded)
            long_name = long_size = None


def _decompressed(url: str, stream: BinaryIO) -> BinaryIO:
    if url.endswith(".gz"):
        import gzip

        return gzip.GzipFile(fileobj=stream, mode="rb")
    return stream


_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # key ends at the first dot


def samples_from_tars(streams: Iterable[tuple[str, BinaryIO]], context: _WorkerContext,
                      max_consecutive_empty: int) -> Iterator[dict]:
    """Group adjacent tar members by key into {"__key__", "__url__", ext: bytes} samples.

    A tar that ends inside a member loses the sample being read (counted once) and the rest of
    that shard. Resampled mode would spin forever over shards with nothing readable in them, so
    that raises after `max_consecutive_empty` empty shards in a row."""
    consecutive_empty = 0
    for url, stream in streams:
        produced = 0
        sample: dict | None = None
        try:
            for name, data in tar_members(_decompressed(url, stream)):
                match = _KEY_AND_EXTENSION.match(name)
                if match is None:
                    continue  # no extension: not part of any sample
                key, extension = match.group(1), match.group(2).lower()
                if data is None:  # read past: larger than any sample file may be
                    if not context.skip(OVERSIZED_MEMBER, url, key, None):
                        return
                    continue
                if sample is not None and sample["__key__"] != key:
                    produced += 1
                    yield sample
                    sample = None
                if sample is None:
                    sample = {"__key__": key, "__url__": url}
                sample[extension] = data
        except TAR_ERRORS as error:
            if not context.skip(TRUNCATED_TAR, url, sample and sample["__key__"], error):
                return
            sample = None
        if sample is not None:
            produced += 1
            yield sample
        consecutive_empty = 0 if produced else consecutive_empty + 1
        if consecutive_empty > max_consecutive_empty:
            raise RuntimeError(f"data: {consecutive_empty} shards in a row had no readable "
                               f"samples (last: {url})")


def shuffle_samples(samples: Iterable[dict], buffer_size: int, rng: random.Random
                    ) -> Iterator[dict]:
    """Reservoir-style shuffle: fill a buffer, then emit a random element per new arrival."""
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        buffer[index], sample = sample, buffer[index]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def complete_samples(samples: Iterable[dict], context: _WorkerContext) -> Iterator[dict]:
    """Keep samples with an image and a caption; count the others."""
    for sample in samples:
        if not any(extension in sample for extension in IMAGE_EXTENSIONS):
            reason = MISSING_IMAGE
        elif TEXT_EXTENSION not in sample:
            reason = MISSING_TEXT
        else:
            yield sample
            continue
        if not context.skip(reason, sample["__url__"], sample["__key__"], None):
            return


def _image_bytes(sample: dict) -> bytes:
    return next(sample[extension] for extension in IMAGE_EXTENSIONS if extension in sample)


def decode_for_cpu(data: bytes, augmentation: _Augmentation, rng: random.Random,
                   output_size: int, validate_only: bool = False) -> np.ndarray | None:
    """JPEG/PNG/WebP bytes -> uint8 [S,S,3]: crop box drawn, then decode at the smallest JPEG
    DCT scale that keeps the crop >= output_size, then crop + resize + RGB in one resize call.

    `validate_only` runs exactly the same decode (same draft scale, full load) without the
    resize: used to fast-forward, it fails on exactly the samples the real path fails on."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        box, flip = augmentation.draw(width, height, rng)
        crop_width, crop_height = box[2] - box[0], box[3] - box[1]
        if image.format == "JPEG":
            # draft() picks the largest power-of-two reduction <= min(W/req_w, H/req_h), so
            # asking for W*S/crop_w keeps the reduced crop at least S pixels wide (same for H).
            image.draft("RGB", (math.ceil(width * output_size / crop_width),
                                math.ceil(height * output_size / crop_height)))
        reduced_width, reduced_height = image.size
        x_scale, y_scale = reduced_width / width, reduced_height / height
        image.load()
        if validate_only:
            return None
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")  # palette/alpha/CMYK; resampling needs a plain mode
        resized = image.resize(
            (output_size, output_size), Image.Resampling.BICUBIC,
            box=(box[0] * x_scale, box[1] * y_scale, box[2] * x_scale, box[3] * y_scale))
        if resized.mode != "RGB":
            resized = resized.convert("RGB")
        if flip:
            resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(resized)


def decode_for_eval(data: bytes, output_size: int, url: str = "") -> np.ndarray:
    """Image bytes -> uint8 [S,S,3] exactly as the loader prepares a sample with
    `augment=False` (centre square crop of the short side, bicubic resize, RGB), for code that
    reads images from outside shards (`model.evaluate`'s image folders). Bytes the loader
    would skip as BAD_IMAGE raise SampleError(BAD_IMAGE) here."""
    centre_crop = _Augmentation(augment=False, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    try:
        # The RNG is never drawn from without augmentation; decode_for_cpu just takes one.
        return decode_for_cpu(data, centre_crop, random.Random(0), output_size)
    except _IMAGE_ERRORS as error:
        raise SampleError(BAD_IMAGE, url, None, error) from error


_JPEG_END = b"\xff\xd9"


def prepare_for_gpu(data: bytes, augmentation: _Augmentation, rng: random.Random
                    ) -> tuple[bytes, tuple[int, ...], bool]:
    """Check bytes without decoding them and draw the crop: nvjpeg gets baseline RGB/grey
    JPEGs; anything else (PNG, WebP, CMYK) is decoded here once and re-encoded as JPEG.

    Truncated JPEGs (no end-of-image marker near the end) raise like a failed PIL decode."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        box, flip = augmentation.draw(width, height, rng)
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            if data.rfind(_JPEG_END, max(0, len(data) - 1024)) < 0:
                raise OSError("JPEG has no end-of-image marker (truncated)")
            return data, box, flip
        image.load()
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=95)
        return buffer.getvalue(), box, flip


def decode_samples(samples: Iterable[dict], context: _WorkerContext, fast_forward: int
                   ) -> Iterator[_Decoded]:
    """Decode (CPU) or check (GPU) each sample; skip and count the bad ones.

    The n-th complete sample always gets the RNG seeded with n, so its crop and flip do not
    depend on how many samples before it were bad or fast-forwarded. The first `fast_forward`
    good samples are validated and dropped (resuming mid-epoch); counts from that stretch are
    discarded, since the run being resumed reported them already."""
    config = context.config
    augmentation = _Augmentation(config.augment, config.crop_scale, config.crop_ratio, config.flip)
    base_seed = context.seed_text("augment")
    forwarded = 0
    for index, sample in enumerate(samples):
        rng = random.Random(f"{base_seed}/{index}")
        validating = forwarded < fast_forward
        try:
            text = sample[TEXT_EXTENSION].decode("utf-8")
        except UnicodeDecodeError as error:
            if not context.skip(BAD_TEXT, sample["__url__"], sample["__key__"], error):
                return
            continue
        try:
            if context.plan.gpu_decode:
                jpeg, box, flip = prepare_for_gpu(_image_bytes(sample), augmentation, rng)
                decoded = _Decoded(text, jpeg=jpeg, box=box, flip=flip)
            else:
                pixels = decode_for_cpu(_image_bytes(sample), augmentation, rng,
                                        config.image_size, validate_only=validating)
                decoded = _Decoded(text, pixels=pixels)
        except _IMAGE_ERRORS as error:
            if not context.skip(BAD_IMAGE, sample["__url__"], sample["__key__"], error):
                return
            continue
        if validating:
            forwarded += 1
            if forwarded == fast_forward:
                context.skipped.clear()
            continue
        yield decoded


def batch_samples(decoded: Iterable[_Decoded], context: _WorkerContext, tokenizer: Tokenizer,
                  batch_sizes: Iterator[int]) -> Iterator[RawBatch]:
    """Group into batches of the sizes `batch_sizes` yields (stopping when it ends), tokenize,
    attach the skip counts gathered since the last batch."""
    gpu = context.plan.gpu_decode
    target = next(batch_sizes, 0)
    pending: list[_Decoded] = []

    def take_counts() -> dict[str, int]:
        counts = dict(context.skipped)
        context.skipped.clear()
        return counts

    def make_batch(items: list[_Decoded]) -> RawBatch:
        batch = RawBatch(size=len(items), skipped={},
                         tokens=tokenizer([item.text for item in items]))
        if gpu:
            blobs = [item.jpeg for item in items]
            batch.encoded = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
            batch.encoded_lengths = [len(blob) for blob in blobs]
            batch.boxes = torch.tensor([item.box for item in items], dtype=torch.int64)
            batch.flips = torch.tensor([item.flip for item in items], dtype=torch.bool)
        else:
            # One transpose per batch to CHW; the float conversion waits for the main process.
            stacked = np.stack([item.pixels for item in items])
            batch.pixels = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))
        batch.skipped = take_counts()
        return batch

    if target > 0:
        for item in decoded:
            pending.append(item)
            if len(pending) == target:
                yield make_batch(pending)
                pending = []
                target = next(batch_sizes, 0)
                if target == 0:
                    break
    if pending and not context.config.drop_last:
        yield make_batch(pending)
    elif context.skipped:
        yield RawBatch(size=0, skipped=take_counts())  # counts only; the Loader drops it


def _worker_slot(worker_id: int, workers: int, start_batch: int) -> int:
    """DataLoader asks workers for batches round-robin starting at worker 0. Batch g of the
    epoch comes from slot g % workers; a loader resuming at start_batch renames its workers so
    that its first worker plays slot start_batch % workers."""
    return (worker_id + start_batch) % workers


def _slot_batch_sizes(context: _WorkerContext) -> tuple[int, Iterator[int]]:
    """(batches to fast-forward, sizes of the batches to produce) for this worker."""
    plan, config = context.plan, context.config
    slot, slots = context.slot, context.slots
    # Batches of this slot with global index below start_batch: slot, slot+slots, ...
    already = max(0, -(-(plan.start_batch - slot) // slots))
    if plan.batches_per_rank is None:
        return already, iter(lambda: config.batch_size, None)  # until the shards run out
    sizes = []
    for index in range(already * slots + slot, plan.batches_per_rank, slots):
        remaining = plan.samples_per_rank - index * config.batch_size
        sizes.append(min(config.batch_size, remaining))
    return already, iter(sizes)


class ShardStream(torch.utils.data.IterableDataset):
    """The dataset each DataLoader worker iterates: this worker's batches of one epoch."""

    def __init__(self, config: LoaderConfig, plan: _EpochPlan, tokenizer: Tokenizer,
                 handler: ErrorHandler):
        super().__init__()
        self.config, self.plan, self.tokenizer, self.handler = config, plan, tokenizer, handler

    def __iter__(self) -> Iterator[RawBatch]:
        # Workers forked from a trainer inherit Beam's options; spawned ones start blank.
        apply_filesystem_flags(self.config.filesystem_flags)
        info = torch.utils.data.get_worker_info()
        worker_id, workers = (0, 1) if info is None else (info.id, info.num_workers)
        context = _WorkerContext(
            self.config, self.plan, _worker_slot(worker_id, workers, self.plan.start_batch),
            workers, self.handler, collections.Counter())
        fast_forward_batches, batch_sizes = _slot_batch_sizes(context)
        shards = self.plan.shards.urls
        stages = [
            lambda _: (resampled_shard_urls(context) if self.config.resampled
                       else epoch_shard_urls(context)),
            lambda urls: open_shard_streams(urls, context),
            lambda streams: samples_from_tars(streams, context,
                                              max_consecutive_empty=2 * len(shards) + 10),
            lambda samples: shuffle_samples(samples, self.config.shuffle_buffer,
                                            random.Random(context.seed_text("shuffle"))),
            lambda samples: complete_samples(samples, context),
            lambda samples: decode_samples(samples, context,
                                           fast_forward_batches * self.config.batch_size),
            lambda decoded: batch_samples(decoded, context, self.tokenizer, batch_sizes),
        ]
        stream = None
        for stage in stages:
            stream = stage(stream)
        return stream


# --------------------------------------------------------------------------------------------
# Choosing the decode device


def _nvjpeg_decoder():
    """(decode, "") where decode(list of uint8 JPEG byte tensors, device) -> list of uint8
    [3,H,W] RGB tensors (torchvision's batched nvjpeg), or (None, why not). torchvision is
    imported lazily: the registry's build fails to import beside some torch builds."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except (ImportError, RuntimeError, OSError, AttributeError) as error:
        return None, f"torchvision unavailable ({type(error).__name__}: {error})"

    def decode(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)

    return decode, ""


def choose_decode(requested: str) -> tuple[bool, str]:
    """(use GPU decode, why). `auto` takes the GPU when CUDA and torchvision both work; an
    explicit `gpu` that cannot work falls back to CPU with a warning rather than failing."""
    if requested == "cpu":
        return False, "requested"
    if not torch.cuda.is_available():
        reason = "no CUDA device"
    else:
        decode, reason = _nvjpeg_decoder()
        if decode is not None:
            return True, "CUDA and torchvision available"
    if requested == "gpu":
        logger.warning("data: GPU decode requested but %s; decoding on CPU", reason)
    return False, reason


# --------------------------------------------------------------------------------------------
# The loader the trainer iterates


class Loader:
    """Iterate for (images float32 [B,3,S,S], tokens int64 [B,context]) on `device`.

    `skipped` sums the skip counts (by reason) of the current pass so far; `description`
    is the one line to print; `len()` is exact in resampled mode and an estimate otherwise."""

    def __init__(self, dataloader: torch.utils.data.DataLoader, config: LoaderConfig,
                 plan: _EpochPlan, device: torch.device, description: str):
        self.dataloader, self.config, self.plan = dataloader, config, plan
        self.device = device
        self.description = description
        self.skipped: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        if self.plan.batches_per_rank is not None:
            return max(0, self.plan.batches_per_rank - self.plan.start_batch)
        total = self.plan.shards.total_samples
        if total is None:
            raise TypeError("unknown length: no sizes.json and not resampled")
        return max(0, total // self.plan.world_size // self.config.batch_size
                   - self.plan.start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raw_batches = self._raw_batches()
        if self.device.type == "cuda":
            return self._prefetched(raw_batches)
        return (self._finish(raw) for raw in raw_batches)

    def _raw_batches(self) -> Iterator[RawBatch]:
        self.skipped.clear()  # counts of the current pass
        for raw in self.dataloader:
            self.skipped.update(raw.skipped)
            if raw.size:
                yield raw

    def _finish(self, raw: RawBatch) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = raw.tokens.to(self.device, non_blocking=True)
        if raw.pixels is not None:
            pixels = raw.pixels.to(self.device, non_blocking=True)
            return normalise_uint8(pixels, self.config.mean, self.config.std), tokens
        images, keep = self._decode_on_gpu(raw)
        if keep is not None:
            tokens = tokens[keep.to(self.device)]
            raw.boxes, raw.flips = raw.boxes[keep], raw.flips[keep]
        return augment_batch(images, raw.boxes, raw.flips, self.config.image_size,
                             self.config.mean, self.config.std), tokens

    def _decode_on_gpu(self, raw: RawBatch) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """nvjpeg decode of the whole batch; if that fails, image by image, then PIL for the
        images nvjpeg refuses; samples both reject are dropped (batch shrinks, counted)."""
        decode, _ = _nvjpeg_decoder()
        blobs = list(torch.split(raw.encoded, raw.encoded_lengths))
        try:
            return decode(blobs, self.device), None
        except RuntimeError:
            logger.debug("data: batched nvjpeg decode failed; decoding one by one")
        images, keep = [], []
        for blob in blobs:
            try:
                images.extend(decode([blob], self.device))
                keep.append(True)
                continue
            except RuntimeError:
                pass
            try:
                with Image.open(io.BytesIO(blob.numpy().tobytes())) as image:
                    array = np.array(image.convert("RGB"))
                images.append(torch.from_numpy(array).permute(2, 0, 1).to(self.device))
                keep.append(True)
            except _IMAGE_ERRORS:
                self.skipped[GPU_DECODE_FAILED] += 1
                keep.append(False)
        return images, torch.tensor(keep, dtype=torch.bool)

    def _prefetched(self, raw_batches: Iterator[RawBatch]
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Prepare batch i+1 (copy, decode, augment) on a side stream while the trainer's
        stream computes on batch i; an event per batch makes the trainer wait only for its own."""
        side_stream = torch.cuda.Stream(device=self.device)

        def prepare(raw):
            with torch.cuda.stream(side_stream):
                batch = self._finish(raw)
                ready = torch.cuda.Event()
                ready.record(side_stream)
            return batch, ready

        def hand_over(prepared):
            batch, ready = prepared
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for tensor in batch:
                tensor.record_stream(current)  # memory made on the side stream, used here
            return batch

        pending = None
        for raw in raw_batches:
            following = prepare(raw)
            if pending is not None:
                yield hand_over(pending)
            pending = following
        if pending is not None:
            yield hand_over(pending)


def _distributed_rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _keep_batch(batch: RawBatch) -> RawBatch:
    return batch  # workers already batch; DataLoader(batch_size=None) must not re-collate


def make_loader(config: LoaderConfig, tokenizer: Tokenizer, *, epoch: int = 0,
                start_batch: int = 0, device: str | torch.device | None = None,
                rank: int | None = None, world_size: int | None = None,
                handler: ErrorHandler = ignore_and_continue,
                shards: ShardList | None = None) -> Loader:
    """The loader for one epoch, starting at batch `start_batch` of that epoch.

    Determinism: the batches are a function of (shards, config, epoch, rank, world_size,
    worker count). Resampled mode: `make_loader(c, t, epoch=e, start_batch=k)` yields exactly
    batches k, k+1, ... of `make_loader(c, t, epoch=e)` (same samples, same order, same crops)
    provided `config.workers` is unchanged (workers=0 and workers=1 are the same stream).
    Shard-list mode gives the same guarantee as long as no worker had run out of shards before
    batch k; near an epoch's end, where workers finish unevenly, batches may come in a
    different order. Fast-forwarding decodes (without resizing) the skipped samples, because
    which samples are corrupt decides what the later batches hold.

    `device`: where batches land (default: cuda if available, else cpu). `rank`/`world_size`:
    default torch.distributed's. `shards`: a `list_shards` result to reuse across epochs.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if rank is None or world_size is None:
        rank, world_size = _distributed_rank_and_world()
    shards = shards or list_shards(config.shards, config.filesystem_flags)
    gpu_decode, why = choose_decode(config.decode)
    if gpu_decode and device.type != "cuda":
        gpu_decode, why = False, f"output device is {device}"

    batches_per_rank = samples_per_rank = None
    if config.resampled:
        epoch_samples = config.epoch_samples or shards.total_samples
        if not epoch_samples:
            raise ValueError("resampled mode needs epoch_samples when sizes.json is missing")
        samples_per_rank = epoch_samples // world_size
        batches_per_rank = (samples_per_rank // config.batch_size if config.drop_last
                            else -(-samples_per_rank // config.batch_size))
    elif len(shards.urls) < world_size * max(1, config.workers):
        logger.warning("data: %d shards for %d ranks x %d workers: some workers get none",
                       len(shards.urls), world_size, max(1, config.workers))
    plan = _EpochPlan(shards, epoch, rank, world_size, start_batch, batches_per_rank,
                      samples_per_rank, gpu_decode)
    dataloader = torch.utils.data.DataLoader(
        ShardStream(config, plan, tokenizer, handler), batch_size=None,
        collate_fn=_keep_batch, num_workers=config.workers,
        prefetch_factor=config.prefetch_factor if config.workers else None,
        pin_memory=device.type == "cuda", in_order=True)
    mode = (f"resampled, {samples_per_rank} samples/rank" if config.resampled
            else f"{shards.total_samples or 'unknown'} samples")
    where = (f"GPU decode (nvjpeg) on {device}, {config.workers} workers reading bytes"
             if gpu_decode else f"CPU decode in {config.workers} workers (PIL), batches to {device}")
    description = (f"data: {where}; {len(shards.urls)} shards, {mode}, batch {config.batch_size},"
                   f" {config.image_size} px, epoch {epoch} from batch {start_batch} ({why})")
    logger.info(description)
    return Loader(dataloader, config, plan, device, description)
