"""Stage 8: download, check and resize images (img2dataset's library parts inside a DoFn).

Each DoFn instance keeps up to 2 x `threads` fetches in flight across its whole bundle (a
sliding window, not fixed batches: one slow server must not stall a batch behind it), at most
`max_per_host` of them to one host (`hosts.HostGate`); candidates of a busy or paused host
wait in its queue without holding a thread.
Each pool thread fetches an image and then checks, resizes and hashes it: the decoders, the
resize and the encoder release the GIL, so one worker's images use all its cores. A plain
JPEG that is downscaled is decoded at reduced size (`resize.py`, libjpeg-turbo's scaled
IDCT); every other image goes through img2dataset's `Resizer`, one thread at a time (it
silences stdout/stderr by swapping process-wide file descriptors, which two threads at once
would leave swapped for good).

Before decoding, the image header is read with Pillow: a 400-megapixel PNG of a few KB (a
decompression bomb) is refused on its declared size, and a JPEG or PNG without its end marker
is refused as truncated (OpenCV would decode it, grey bottom and all).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import os
import re
import threading
import time
import warnings

import apache_beam as beam
from apache_beam.metrics import Metrics

from openwit.pipeline.images.config import DownloadConfig
from openwit.pipeline.core.progress import ProgressLog
from openwit.pipeline.core.records import (
    FAILED,
    KEPT,
    Reason,
    Stage,
    StageResult,
    failure,
    in_global_window,
    opt_out_directives,
)
from openwit.pipeline.images.fetch import Fetcher
from openwit.pipeline.images.hosts import HostGate, host_of
from openwit.pipeline.images.image_hash import DECODER_ERRORS
from openwit.pipeline.images.resize import (
    border_content,
    decode_reduced,
    encode_jpeg,
    fit,
    plan_jpeg,
)

JPEG_END = b"\xff\xd9"
JPEG_TRAILING_SLACK = 4096  # some encoders append padding or vendor data after the end marker
PNG_END = b"IEND"


FINISH_SLACK_SECONDS = 5.0
WAITING_PER_THREAD = 8  # candidates held for busy or paused hosts, per fetch thread

RESIZER_ERRORS = {
    "image too small": Reason.IMAGE_TOO_SMALL,
    "image area too large": Reason.IMAGE_TOO_LARGE,
    "aspect ratio too large": Reason.ASPECT_RATIO,
}


# Pillow names the stream it failed on ("<_io.BytesIO object at 0x7f...>"): an address that
# changes on every run would make failure records differ between identical runs.
_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


def without_addresses(error: Exception) -> str:
    return _OBJECT_REPR.sub("", str(error))


def load_img2dataset():
    """img2dataset's downloader and resizer modules, imported on the worker that needs them
    (img2dataset's import pulls in wandb, which is slow to load)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_SILENT", "true")
    from img2dataset import downloader, resizer

    return downloader, resizer


def load_resizer():
    return load_img2dataset()[1]


def is_disallowed(headers, user_agent_token, directives) -> bool:
    """img2dataset's X-Robots-Tag matcher, imported only when a response carries the header."""
    if not headers.get_all("X-Robots-Tag"):
        return False
    downloader, _ = load_img2dataset()
    return downloader.is_disallowed(headers, user_agent_token, directives)


def is_complete(image_format: str | None, data: bytes) -> bool:
    if image_format == "JPEG":
        end = data.rfind(JPEG_END)
        return end != -1 and len(data) - (end + len(JPEG_END)) <= JPEG_TRAILING_SLACK
    if image_format == "PNG":
        return PNG_END in data[-64:]
    return True  # other formats: the decoder is the judge


class ImageProcessor:
    """Downloaded bytes -> (sample fields, None) or (None, (reason, detail)).

    `resizer_module`: img2dataset's resizer module, or a function that imports it (the
    download stage passes `load_resizer`, so that a list of plain JPEGs never pays for
    img2dataset's import, which takes seconds: wandb, albumentations, torch).
    """

    def __init__(self, config: DownloadConfig, resizer_module):
        import cv2

        # One thread per image: the fetch pool already runs as many images at once as
        # there are threads, and OpenCV's own pool would only oversubscribe the cores.
        cv2.setNumThreads(1)
        self._config = config
        self._hasher = config.hasher
        self._resizer_module = resizer_module
        self._resizer = None
        # The Resizer silences stdout/stderr by swapping process-wide file descriptors: two
        # threads inside it at once would leave them swapped for good.
        self._resizer_lock = threading.Lock()

    def _resize(self, stream):
        """img2dataset's Resizer on `stream`; call it holding `_resizer_lock`."""
        if self._resizer is None:
            module = self._resizer_module
            module = module() if callable(module) else module
            c = self._config
            self._resizer = module.Resizer(
                image_size=c.image_size,
                resize_mode=c.resize_mode,
                resize_only_if_bigger=c.resize_only_if_bigger,
                encode_quality=c.encode_quality,
                encode_format="jpg",
                min_image_size=c.min_image_size,
                max_image_area=c.max_image_area,
                max_aspect_ratio=c.max_aspect_ratio,
            )
        return self._resizer(stream)

    def __call__(self, data: bytes):
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as header:
                    image_format, (width, height) = header.format, header.size
                    needs_pillow = needs_pillow_decode(header)
                    grey = header.mode == "L"
        except Image.DecompressionBombError as err:
            return None, (Reason.IMAGE_TOO_LARGE, str(err))
        except DECODER_ERRORS as err:  # UnidentifiedImageError is an OSError
            return None, (Reason.NOT_AN_IMAGE, f"{type(err).__name__}: {without_addresses(err)}")
        if width * height > self._config.max_image_area:
            return None, (Reason.IMAGE_TOO_LARGE, f"{width}x{height} pixels")
        if not is_complete(image_format, data):
            return None, (Reason.TRUNCATED_IMAGE, f"{image_format} without its end marker")
        c = self._config
        plan = None if needs_pillow or image_format != "JPEG" else plan_jpeg(
            width, height, grey, c.image_size, c.resize_mode)
        # A decoder that meets hostile bytes can raise almost anything; each is this
        # candidate's counted decode_error, never the bundle's failure.
        try:
            if plan is not None:
                problem = self._size_problem(width, height)
                if problem is not None:
                    return None, problem
                decoded = decode_reduced(data, plan)
                pixels = fit(decoded, plan, c.resize_mode, c.image_size)
                encoded, (hashes, colours) = (encode_jpeg(pixels, c.encode_quality),
                                              self._views(decoded))
                (height_out, width_out), original_width, original_height = (
                    pixels.shape[:2], width, height)
            else:
                with self._resizer_lock:
                    encoded, width_out, height_out, original_width, original_height, error = (
                        self._resize(io.BytesIO(plain_rgb_png(data) if needs_pillow else data)))
                if error is not None:
                    return None, (RESIZER_ERRORS.get(error, Reason.DECODE_ERROR), error)
                hashes, colours = self._hash_resizer_output(encoded, original_width,
                                                            original_height)
        except Exception as err:  # noqa: BLE001 (see above)
            return None, (Reason.DECODE_ERROR, f"{type(err).__name__}: {without_addresses(err)}")
        return {
            "jpg": encoded,
            "width": int(width_out),
            "height": int(height_out),
            "original_width": int(original_width),
            "original_height": int(original_height),
            "original_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "phash": hashes[0],
            "phash_crops": list(hashes[1:]),
            "colours": list(colours),
        }, None

    def _views(self, pixels) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The perceptual hash and the colour of each view of the decoded picture."""
        return self._hasher.of_pixels(pixels), self._hasher.colours(pixels)

    def _hash_resizer_output(self, encoded: bytes, original_width: int,
                             original_height: int):
        """The Resizer keeps its decoded pixels to itself: the hash is of its small output,
        without the white border (the picture, as on the reduced path; a centre crop stays
        cropped)."""
        import cv2
        import numpy as np

        pixels = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
        c = self._config
        if c.resize_mode == "border":
            pixels = border_content(pixels, original_width, original_height, c.image_size,
                                    c.resize_only_if_bigger)
        return self._views(pixels)

    def _size_problem(self, width: int, height: int):
        """The Resizer's size checks, in its order and words, on the header's size."""
        c = self._config
        for error, failed in (("image too small", min(width, height) < c.min_image_size),
                              ("image area too large", width * height > c.max_image_area),
                              ("aspect ratio too large",
                               max(width, height) / min(width, height) > c.max_aspect_ratio)):
            if failed:
                return RESIZER_ERRORS[error], error
        return None


# What img2dataset's Resizer (OpenCV's decoder) gets right by itself: 8-bit RGB or grey,
# upright, one frame. Anything else is decoded by Pillow first (`plain_rgb_png`).
PLAIN_MODES = ("RGB", "L")
EXIF_ORIENTATION = 0x0112


def needs_pillow_decode(image) -> bool:
    """True for images OpenCV would store wrongly: 16-bit or float pixels (saturated to
    white), a palette, an alpha channel (matted in float64, gigabytes near the area limit),
    CMYK, an EXIF orientation other than upright (ignored), or several frames."""
    if image.mode not in PLAIN_MODES or getattr(image, "n_frames", 1) > 1:
        return True
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except DECODER_ERRORS:
        return False
    return orientation not in (None, 1)


def plain_rgb_png(data: bytes) -> bytes:
    """The image as the Resizer should see it, losslessly as PNG: the first frame (animated
    GIF, APNG, WebP), turned upright by its EXIF orientation, 16-bit and float pixels scaled
    to 8 bits, palettes expanded, alpha composited on white in 8-bit arithmetic (4 bytes a
    pixel at most, where OpenCV's path holds float64 copies), CMYK and the rest as RGB."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            values = np.asarray(image, dtype=np.uint32)
            image = Image.fromarray((np.minimum(values, 65535) >> 8).astype(np.uint8), "L")
        elif image.mode == "F":
            values = np.nan_to_num(np.asarray(image, dtype=np.float32))
            image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info
                                  else "RGB")
        if image.mode in ("RGBA", "LA", "La", "RGBa"):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        elif image.mode not in PLAIN_MODES:
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


class DownloadFn(beam.DoFn):
    """(shard, candidate) -> (shard, sample) on the main output, (shard, failure) on FAILED.

    The scheduler: a candidate first waits in its host's queue (holding no thread) until its
    host has a free slot and is not paused, then goes to the fetch pool. Hosts are served in
    turn, so a list dominated by one host still keeps the pool busy with the others.
    """

    def __init__(self, config: DownloadConfig):
        self._config = config

    def setup(self):
        self._hosts = HostGate(self._config)
        self._fetcher = Fetcher(self._config, is_disallowed, hosts=self._hosts)
        self._process_image = ImageProcessor(self._config, load_resizer)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._config.threads, thread_name_prefix="openwit-fetch"
        )
        # As many images decoded at once as there are cores: more threads at it only fight
        # for the GIL with the scheduler (this thread), which would then dispatch late.
        self._processing_slots = threading.BoundedSemaphore(os.cpu_count() or 1)
        self._max_in_flight = 2 * self._config.threads
        self._max_waiting = WAITING_PER_THREAD * self._config.threads
        # A fetch ends by its own deadlines; one that has not, this long after it was handed
        # to the pool (it may queue behind a full round of the pool), is failed as a timeout
        # so that nothing one host does can hold the bundle.
        self._stuck_after = 2 * self._fetcher.longest_fetch_seconds + FINISH_SLACK_SECONDS
        self._ok = Metrics.counter("openwit", "download.ok")
        self._failed = Metrics.counter("openwit", "download.failed")
        self._bytes = Metrics.counter("openwit", "download.bytes")
        self._deferred = Metrics.counter("openwit", "download.deferred_by_host_pause")
        self._progress = ProgressLog("download")

    def start_bundle(self):
        self._waiting: dict[str, collections.deque] = {}
        self._waiting_count = 0
        self._in_flight: dict[concurrent.futures.Future, tuple[int, dict, str, float]] = {}

    def process(self, shard_and_candidate):
        shard, candidate = shard_and_candidate
        host = host_of(candidate["url"])
        if self._hosts.given_up(host):
            yield self._fail(shard, candidate, Reason.HOST_BACKED_OFF,
                             self._hosts.describe_give_up())
            return
        self._hold(host, shard, candidate)
        yield from self._dispatch()
        while (len(self._in_flight) >= self._max_in_flight
               or self._waiting_count >= self._max_waiting):
            yield from self._wait_for_progress()

    def finish_bundle(self):
        outputs = list(self._dispatch())
        while self._in_flight or self._waiting_count:
            outputs.extend(self._wait_for_progress())
        for output in outputs:
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, in_global_window(output.value))
            else:
                yield in_global_window(output)
        self._progress.log()

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._fetcher.close()

    # ------------------------------------------------------------------ the scheduler

    def _hold(self, host, shard, candidate, first=False):
        queue = self._waiting.setdefault(host, collections.deque())
        if first:
            queue.appendleft((shard, candidate))
        else:
            queue.append((shard, candidate))
        self._waiting_count += 1

    def _dispatch(self):
        """Hand waiting candidates to the pool, one host after another, while the pool has
        room; fail the candidates of hosts given up."""
        for host in list(self._waiting):
            if len(self._in_flight) >= self._max_in_flight:
                break
            queue = self._waiting[host]
            if self._hosts.given_up(host):
                while queue:
                    self._waiting_count -= 1
                    yield self._fail(*queue.popleft(), Reason.HOST_BACKED_OFF,
                                     self._hosts.describe_give_up())
            served = False
            while (queue and len(self._in_flight) < self._max_in_flight
                   and self._hosts.try_acquire(host)):
                shard, candidate = queue.popleft()
                self._waiting_count -= 1
                future = self._pool.submit(self._fetch_and_process, candidate["url"], host)
                self._in_flight[future] = (shard, candidate, host, time.monotonic())
                served = True
            if not queue:
                del self._waiting[host]
            elif served:  # to the back of the line: the next pass starts with other hosts
                self._waiting[host] = self._waiting.pop(host)

    def _wait_for_progress(self):
        """Wait for a fetch to end (or a paused host to resume), then dispatch again."""
        if not self._in_flight:
            # Everything waiting belongs to paused hosts (a pause is bounded).
            pause = self._hosts.seconds_until_resumed(self._waiting)
            time.sleep(min(pause if pause is not None else 0.0, self._hosts.longest_pause))
            yield from self._dispatch()
            return
        now = time.monotonic()
        oldest = min(started for _, _, _, started in self._in_flight.values())
        timeout = max(0.0, oldest + self._stuck_after - now)
        pause = self._hosts.seconds_until_resumed(self._waiting)
        if pause is not None:
            timeout = min(timeout, pause)
        done, _ = concurrent.futures.wait(self._in_flight, timeout=timeout,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        for finished in done:
            output = self._complete(finished)
            if output is not None:
                yield output
        now = time.monotonic()
        for future, (shard, candidate, host, started) in list(self._in_flight.items()):
            if now - started >= self._stuck_after:
                del self._in_flight[future]
                # A fetch that has started gives its host slot back itself when it really
                # ends; one still queued in the pool never will.
                if future.cancel():
                    self._hosts.release(host)
                yield self._fail(shard, candidate, Reason.TIMEOUT,
                                 f"still in flight {self._stuck_after:g} s after it was started")
        yield from self._dispatch()

    def _fetch_and_process(self, url: str, host: str):
        """On a pool thread: the fetch (holding the host's slot, and only the fetch), then
        the image's checks, resize and hashes (the decoders and the encoder release the
        GIL, so images are processed on all cores)."""
        try:
            result = self._fetcher.fetch(url)
        finally:
            self._hosts.release(host)
        if result.body is None:
            return result, None, None
        with self._processing_slots:
            return result, *self._process_image(result.body)

    def _complete(self, future):
        shard, candidate, host, _ = self._in_flight.pop(future)
        result, fields, problem = future.result()
        if result.deferred:
            if self._hosts.given_up(host):
                return self._fail(shard, candidate, Reason.HOST_BACKED_OFF,
                                  self._hosts.describe_give_up())
            self._deferred.inc()
            self._hold(host, shard, candidate, first=True)
            return None
        if result.body is None:
            return self._fail(shard, candidate, result.reason, result.detail)
        self._bytes.inc(len(result.body))
        if problem is not None:
            return self._fail(shard, candidate, *problem)
        self._ok.inc()
        self._progress.update(ok=1)
        return shard, {**candidate, **fields}

    def _fail(self, shard, candidate, reason, detail):
        self._failed.inc()
        self._progress.update(failed=1)
        if reason == Reason.OPTED_OUT:
            for directive in opt_out_directives(detail):
                Metrics.counter("openwit", f"download.opted_out.{directive}").inc()
        return beam.pvalue.TaggedOutput(
            FAILED, (shard, failure(candidate, Stage.DOWNLOAD, reason, detail))
        )


class DownloadImages(beam.PTransform):
    """(shard, candidate) pairs -> StageResult of (shard, sample) and (shard, failure) pairs."""

    def __init__(self, config: DownloadConfig):
        super().__init__()
        self._config = config

    def expand(self, shard_and_candidates):
        result = shard_and_candidates | "Fetch and resize" >> beam.ParDo(
            DownloadFn(self._config)
        ).with_outputs(FAILED, main=KEPT)
        return StageResult(result[KEPT], result[FAILED])
