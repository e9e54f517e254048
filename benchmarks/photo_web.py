"""Photo-like JPEGs for the download benchmark, made once and served from memory.

    .venv/bin/python benchmarks/photo_web.py --photos 20000 [--serve] [--hosts 16]

The images: 400-1600 px on the long side in the usual photo aspect ratios, 50-500 KB at JPEG
quality 75-92. Each is a crop of one of a few large synthetic scenes (soft-edged shapes under
smooth shading, with 1/f texture that is mostly luminance, as in photographs: the statistics
that decide what a JPEG decoder spends its time on), flipped, re-coloured and re-lit at
random, so every image is distinct in its bytes and its pixels.

They are cached in one file (`photos.bin`, with `index.json` of offsets) under
$OPENWIT_BENCH_CACHE (default ~/.cache/openwit-bench): several server processes map the same
file, so the page cache holds it once.

The server: `processes` asyncio processes sharing each (host, port) with SO_REUSEPORT, one
host per loopback address 127.0.0.1 .. 127.0.0.N. `/p/<i>.jpg` is photo i; by a hash of i, 2%
answer 404, 1% answer 500 and 1% answer only after 1-2.5 s. Every response closes its
connection (as img2dataset's urllib client expects).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import mmap
import multiprocessing
import os
import socket
import threading
import time

BASE_SIDE = 2048
SCENES = 16
LONG_SIDES = (400, 1600)
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 5 / 4)
QUALITIES = (75, 92)
MIN_BYTES, MAX_BYTES = 50_000, 500_000
NOT_FOUND_RATE, SERVER_ERROR_RATE, SLOW_RATE = 0.02, 0.01, 0.01
SLOW_SECONDS = (1.0, 2.5)
FORMAT_VERSION = 1


def cache_folder(photos: int, seed: int) -> str:
    root = os.environ.get("OPENWIT_BENCH_CACHE", os.path.expanduser("~/.cache/openwit-bench"))
    return os.path.join(root, f"photos-v{FORMAT_VERSION}-n{photos}-seed{seed}")


# ------------------------------------------------------------------------------ making them


def _field(side: int, alpha: float, rng, channels: int):
    """Gaussian noise whose amplitude spectrum falls as 1/f^alpha, unit variance."""
    import numpy as np

    fy = np.fft.fftfreq(side)[:, None].astype(np.float32)
    fx = np.fft.rfftfreq(side)[None, :].astype(np.float32)
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    amplitude = radius ** -alpha
    planes = [np.fft.irfft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape)),
                            s=(side, side)) for _ in range(channels)]
    noise = np.stack(planes, -1).astype(np.float32)
    return (noise - noise.mean()) / noise.std()


def scene(index: int, seed: int):
    """One large synthetic scene, BASE_SIDE square, uint8 BGR."""
    import cv2
    import numpy as np

    rng = np.random.default_rng([seed, index])
    side = BASE_SIDE
    image = np.empty((side, side, 3), np.float32)
    image[:] = rng.uniform(40, 220, 3)
    for _ in range(int(rng.integers(10, 24))):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        shape = np.zeros((side, side), np.uint8)
        if rng.random() < 0.5:
            centre = tuple(int(v) for v in rng.integers(0, side, 2))
            axes = tuple(int(v) for v in rng.integers(side // 24, side // 3, 2))
            cv2.ellipse(shape, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                        cv2.LINE_AA)
        else:
            corners = rng.integers(0, side, (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(shape, [corners], 255, cv2.LINE_AA)
        weight = cv2.GaussianBlur(shape, (0, 0), float(rng.uniform(1, 6)))
        weight = weight.astype(np.float32)[..., None] / 255
        image = image * (1 - weight) + colour * weight
    shading = _field(side, 2.2, rng, 1)
    luminance = _field(side, 1.1, rng, 1)
    chroma = _field(side, 1.6, rng, 3)
    busy = np.clip(_field(side, 2.5, rng, 1) * 0.8 + 0.55, 0.05, 1.0)
    image = image * (1 + 0.25 * shading) + (luminance * 34 + chroma * 6) * busy
    return np.clip(image, 0, 255).astype(np.uint8)


def photo(scenes: list, index: int, seed: int) -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng([seed, 1_000_003, index])
    long_side = int(rng.integers(LONG_SIDES[0], LONG_SIDES[1] + 1))
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    short_side = max(1, round(long_side / aspect))
    width, height = (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)
    # A smaller photo is a wider view scaled down (denser detail), as photos on the web are.
    zoom = float(rng.uniform(1.0, BASE_SIDE / max(width, height)) ** 0.5)
    window_w, window_h = int(width * zoom), int(height * zoom)
    base = scenes[int(rng.integers(len(scenes)))]
    top = int(rng.integers(0, BASE_SIDE - window_h + 1))
    left = int(rng.integers(0, BASE_SIDE - window_w + 1))
    crop = base[top:top + window_h, left:left + window_w]
    image = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    relight = np.zeros((3, 4), np.float32)  # per-channel gain and a common brightness shift
    relight[:, :3] = np.diag(rng.uniform(0.8, 1.2, 3))
    relight[:, 3] = rng.uniform(-25, 25)
    image = cv2.transform(np.ascontiguousarray(image), relight)
    quality = int(rng.integers(QUALITIES[0], QUALITIES[1] + 1))
    for _ in range(8):  # into the size range by the quality, as a photo site's encoder would
        encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
        if len(encoded) < MIN_BYTES and quality < 97:
            quality += 3
        elif len(encoded) > MAX_BYTES and quality > 40:
            quality -= 8
        else:
            break
    return encoded


def _share_scenes(scenes) -> None:
    global _SCENES  # one copy per generator process, set once by the pool's initializer
    _SCENES = scenes


def _make_range(args) -> list[bytes]:
    start, stop, seed = args
    return [photo(_SCENES, i, seed) for i in range(start, stop)]


def make_photos(photos: int, seed: int = 0, processes: int = 2) -> str:
    """The cache folder holding `photos` images (made now unless it already does)."""
    folder = cache_folder(photos, seed)
    if os.path.exists(os.path.join(folder, "index.json")):
        return folder
    os.makedirs(folder, exist_ok=True)
    started = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        scenes = list(pool.map(scene, range(SCENES), [seed] * SCENES))
    step = 500
    ranges = [(start, min(photos, start + step), seed) for start in range(0, photos, step)]
    offsets, hashes = [], set()
    temporary = os.path.join(folder, "photos.bin.partial")
    with open(temporary, "wb") as out, concurrent.futures.ProcessPoolExecutor(
            processes, initializer=_share_scenes, initargs=(scenes,)) as pool:
        for chunk in pool.map(_make_range, ranges):
            for data in chunk:
                hashes.add(hashlib.sha256(data).digest())
                offsets.append((out.tell(), len(data)))
                out.write(data)
    if len(hashes) != photos:
        raise RuntimeError(f"{photos - len(hashes)} photos repeat another's bytes")
    os.replace(temporary, os.path.join(folder, "photos.bin"))
    with open(os.path.join(folder, "index.json.partial"), "w") as f:
        json.dump({"offsets": offsets, "seed": seed}, f)
    os.replace(os.path.join(folder, "index.json.partial"), os.path.join(folder, "index.json"))
    print(f"made {photos} photos in {time.monotonic() - started:.0f} s into {folder}",
          flush=True)
    return folder


# ------------------------------------------------------------------------------ serving them


def fate(index: int) -> tuple[str, float]:
    """('ok' | 'not_found' | 'error' | 'slow', delay) for photo `index`, fixed by its number."""
    draw = int.from_bytes(hashlib.blake2b(str(index).encode(), digest_size=8).digest(), "big")
    u = draw / 2**64
    if u < NOT_FOUND_RATE:
        return "not_found", 0.0
    if u < NOT_FOUND_RATE + SERVER_ERROR_RATE:
        return "error", 0.0
    if u < NOT_FOUND_RATE + SERVER_ERROR_RATE + SLOW_RATE:
        low, high = SLOW_SECONDS
        return "slow", low + (high - low) * ((draw >> 11) % 1000) / 1000
    return "ok", 0.0


def _headers(status: str, length: int, content_type: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}"
            "\r\nConnection: close\r\n\r\n").encode()


class _PhotoProtocol(asyncio.Protocol):
    def __init__(self, blob, offsets):
        self._blob, self._offsets, self._request = blob, offsets, b""

    def connection_made(self, transport):
        self._transport = transport

    def data_received(self, data):
        self._request += data
        if b"\r\n\r\n" not in self._request:
            if len(self._request) > 16384:
                self._transport.close()
            return
        path = self._request.split(b" ", 2)[1].decode("latin-1")
        asyncio.ensure_future(self._answer(path))

    async def _answer(self, path):
        index = -1
        if path.startswith("/p/") and path.endswith(".jpg"):
            try:
                index = int(path[3:-4])
            except ValueError:
                pass
        transport = self._transport
        if not 0 <= index < len(self._offsets):
            transport.write(_headers("404 Not Found", 0, "text/plain"))
        else:
            outcome, delay = fate(index)
            if outcome == "not_found":
                transport.write(_headers("404 Not Found", 0, "text/plain"))
            elif outcome == "error":
                transport.write(_headers("500 Internal Server Error", 0, "text/plain"))
            else:
                if delay:
                    await asyncio.sleep(delay)
                start, length = self._offsets[index]
                transport.write(_headers("200 OK", length, "image/jpeg"))
                transport.write(self._blob[start:start + length])
        transport.close()


def _serve_process(folder: str, hosts: list[str], port: int, ready) -> None:
    with open(os.path.join(folder, "index.json")) as f:
        offsets = [tuple(o) for o in json.load(f)["offsets"]]
    with open(os.path.join(folder, "photos.bin"), "rb") as f:
        blob = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))

    async def main():
        loop = asyncio.get_running_loop()
        for host in hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            await loop.create_server(lambda: _PhotoProtocol(blob, offsets), sock=sock,
                                     backlog=1024)
        ready.put(True)
        await asyncio.Event().wait()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PhotoWeb:
    """`processes` server processes for the photos in `folder`, on `hosts` loopback addresses."""

    def __init__(self, folder: str, hosts: int = 16, processes: int = 2):
        self.folder, self.port = folder, free_port()
        self.hosts = [f"127.0.0.{i + 1}" for i in range(hosts)]
        with open(os.path.join(folder, "index.json")) as f:
            self.photos = len(json.load(f)["offsets"])
        ready = multiprocessing.Queue()
        self._processes = [multiprocessing.Process(
            target=_serve_process, args=(folder, self.hosts, self.port, ready), daemon=True)
            for _ in range(processes)]
        for process in self._processes:
            process.start()
        for _ in self._processes:
            ready.get(timeout=60)

    def url(self, index: int) -> str:
        return f"http://{self.hosts[index % len(self.hosts)]}:{self.port}/p/{index}.jpg"

    def server_pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def close(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def _load(args) -> tuple[int, int]:
    urls, seconds = args
    done = volume = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(offset):
        nonlocal done, volume
        i = offset
        while time.monotonic() < deadline:
            url = urls[i % len(urls)]
            i += 16
            host, rest = url[7:].split("/", 1)
            connection = http.client.HTTPConnection(host, timeout=10)
            connection.request("GET", "/" + rest)
            body = connection.getresponse().read()
            connection.close()
            with lock:
                done += 1
                volume += len(body)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done, volume


def request_rate(web: PhotoWeb, seconds: float = 5.0, clients: int = 2) -> tuple[float, float]:
    """(responses/s, MB/s) the server gives `clients` processes x 16 threads of http.client
    asking for its fast photos: a lower bound on what it can serve (the client is Python too)."""
    urls = [web.url(i) for i in range(web.photos) if fate(i)[0] == "ok"]
    with concurrent.futures.ProcessPoolExecutor(clients) as pool:
        parts = list(pool.map(_load, [(urls[k::clients], seconds) for k in range(clients)]))
    return (sum(d for d, _ in parts) / seconds, sum(v for _, v in parts) / seconds / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="serve until interrupted")
    args = parser.parse_args()
    folder = make_photos(args.photos, args.seed)
    with PhotoWeb(folder, args.hosts, args.processes) as web:
        rate, volume = request_rate(web)
        print(f"{web.photos} photos on {len(web.hosts)} hosts, port {web.port}: "
              f"{rate:.0f} responses/s, {volume:.0f} MB/s to a Python client")
        if args.serve:
            print(f"e.g. {web.url(0)}", flush=True)
            threading.Event().wait()


if __name__ == "__main__":
    main()
