"""openwit's CLIP input pipeline (model/data.py) vs a loader built the way open_clip's data.py
builds its WebDataset training loader, on the same shards.

    .venv/bin/python benchmarks/bench_loader.py --samples 3000 --workers 2 --repeats 3

Shards: `--samples` rendered 256x256 JPEGs (quality 95, img2dataset's default) with captions,
250 per tar (open_clip wants at least one shard per worker), plus sizes.json; written once under --shards-dir and reused.

Reference (open_clip's get_wds_dataset, training branch): shard list -> detshuffle ->
split_by_node -> split_by_worker -> tarfile_to_samples -> shuffle -> select(image and text) ->
decode("pilrgb") -> per-sample RandomResizedCrop(224, scale 0.9-1.0, bicubic) + convert RGB +
ToTensor + Normalize -> per-sample tokenize -> batched; WebLoader(batch_size=None). torchvision
does not import beside this torch, so its transforms are reimplemented here with the same maths
(torch RNG for the crop parameters, PIL crop then resize, float tensor / 255, sub mean, div std).

Both use the same tokenizer stand-in (words hashed to ids, 77 tokens), batch size, image size
224, worker count and shuffle buffers. Each repeat builds a fresh loader and times one whole
pass over the shards, worker start-up included; images/s is samples / wall time. The two run
alternately so machine noise hits both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONTEXT = 77
IMAGE_SIZE = 224
SAMPLES_PER_SHARD = 250
WORDS = ("a photo of the red blue green small large dog cat house tree car street river "
         "mountain city beach old new portrait painting drawing close up view at night in "
         "winter summer with people on table").split()


def hash_tokenizer(texts):
    """Tokenizer stand-in shared by both loaders (the real one is model/tokenizer.py)."""
    import torch

    tokens = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [zlib.crc32(word.encode()) % 49000 + 1 for word in text.split()][:CONTEXT]
        tokens[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens


# ------------------------------------------------------------------------------------------
# Shards


def render_image(rng: random.Random, size: int = 256):
    """A photo-ish picture: a smooth two-colour gradient, a few filled shapes, sensor noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    top = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    bottom = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    array = top * (1 - ramp) + bottom * ramp + np.zeros((size, size, 3), np.float32)
    image = Image.fromarray(array.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(3, 9)):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randrange(10, size // 2), y0 + rng.randrange(10, size // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (size, size, 3))
    noisy = (np.asarray(image, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def write_shards(folder: str, samples: int, seed: int = 0) -> list[str]:
    """Write (or reuse) the benchmark shards; returns the tar paths."""
    import io

    import webdataset as wds

    sizes_path = os.path.join(folder, "sizes.json")
    counts = [min(SAMPLES_PER_SHARD, samples - start)
              for start in range(0, samples, SAMPLES_PER_SHARD)]
    expected = {f"{index:06d}.tar": count for index, count in enumerate(counts)}
    if os.path.exists(sizes_path):
        with open(sizes_path) as f:
            if json.load(f) == expected:
                return [os.path.join(folder, name) for name in expected]
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    started = time.perf_counter()
    for index, (name, count) in enumerate(expected.items()):
        with wds.TarWriter(os.path.join(folder, name)) as writer:
            for position in range(count):
                buffer = io.BytesIO()
                render_image(rng).save(buffer, "JPEG", quality=95)
                caption = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 16)))
                writer.write({"__key__": f"{index:06d}{position:04d}", "jpg": buffer.getvalue(),
                              "txt": caption, "json": json.dumps({"n": position}).encode()})
    with open(sizes_path, "w") as f:
        json.dump(expected, f)
    print(f"wrote {samples} samples in {len(expected)} shards to {folder} "
          f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return [os.path.join(folder, name) for name in expected]


# ------------------------------------------------------------------------------------------
# The reference: open_clip's training loader, torchvision transforms redone with torch + PIL

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ReferencePreprocess:
    """RandomResizedCrop(224, scale=(0.9, 1.0), bicubic) -> convert RGB -> ToTensor ->
    Normalize, as torchvision does them on a PIL image."""

    def __init__(self, size=IMAGE_SIZE, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
        import torch

        self.size, self.scale, self.ratio = size, scale, ratio
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def crop_params(self, width, height):
        import torch

        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = torch.randint(0, height - h + 1, size=(1,)).item()
                j = torch.randint(0, width - w + 1, size=(1,)).item()
                return i, j, h, w
        return 0, 0, height, width  # (torchvision's ratio-clamped fallback; never hit here)

    def __call__(self, image):
        import numpy as np
        import torch
        from PIL import Image

        i, j, h, w = self.crop_params(*image.size)
        image = image.crop((j, i, j + w, i + h)).resize((self.size, self.size),
                                                        Image.Resampling.BICUBIC)
        image = image.convert("RGB")
        tensor = torch.from_numpy(np.array(image, np.uint8, copy=True))
        tensor = tensor.view(image.size[1], image.size[0], 3).permute(2, 0, 1).contiguous()
        tensor = tensor.to(dtype=torch.float32).div(255)
        return tensor.clone().sub_(self.mean).div_(self.std)


def reference_loader(urls, batch_size, workers, shuffle_buffer, seed):
    import webdataset as wds

    def has_caption_and_image(sample):
        return "txt" in sample and any(k in sample for k in ("png", "jpg", "jpeg", "webp"))

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.detshuffle(bufsize=2000, initial=500, seed=seed, epoch=0),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=shuffle_buffer, initial=shuffle_buffer // 5),
        wds.select(has_caption_and_image),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=ReferencePreprocess(), text=lambda text: hash_tokenizer([text])[0]),
        wds.to_tuple("image", "text"),
        wds.batched(batch_size, partial=False),
    )
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers,
                         persistent_workers=False)


def openwit_loader(folder, batch_size, workers, shuffle_buffer, seed, decode, device=None):
    from openwit.model.data import LoaderConfig, make_loader

    config = LoaderConfig(shards=folder, batch_size=batch_size, workers=workers,
                          image_size=IMAGE_SIZE, shuffle_buffer=shuffle_buffer, seed=seed,
                          decode=decode)
    return make_loader(config, hash_tokenizer, device=device)


def time_pass(loader, synchronize=None) -> tuple[float, int]:
    started = time.perf_counter()
    count = 0
    for images, tokens in loader:
        count += images.shape[0]
    if synchronize:
        synchronize()
    return time.perf_counter() - started, count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards-dir", default=None,
                        help="default: a folder under the temp dir named after --samples")
    args = parser.parse_args(argv)

    import tempfile

    import PIL
    import torch

    from openwit.model.data import choose_decode

    folder = args.shards_dir or os.path.join(tempfile.gettempdir(),
                                             f"openwit_bench_loader_{args.samples}")
    urls = write_shards(folder, args.samples)
    common = dict(batch_size=args.batch_size, workers=args.workers,
                  shuffle_buffer=args.shuffle_buffer, seed=0)
    contenders = {
        "reference (open_clip-style wds, per-sample PIL + float transforms)":
            lambda: time_pass(reference_loader(urls, **common)),
        "openwit CPU loader (model/data.py)":
            lambda: time_pass(openwit_loader(folder, decode="cpu", device="cpu", **common)),
    }
    gpu_decode, why = choose_decode("auto")
    if gpu_decode:
        synchronize = torch.cuda.synchronize
        contenders["openwit CPU decode, batches to cuda"] = lambda: time_pass(
            openwit_loader(folder, decode="cpu", device="cuda", **common), synchronize)
        contenders["openwit GPU decode (nvjpeg)"] = lambda: time_pass(
            openwit_loader(folder, decode="gpu", device="cuda", **common), synchronize)
    else:
        print(f"no GPU decode measurement: {why}", file=sys.stderr)

    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for name, run in contenders.items():
            seconds, count = run()
            rates[name].append(count / seconds)
            print(f"repeat {repeat + 1}: {name}: {count} images in {seconds:.2f} s = "
                  f"{count / seconds:.0f} images/s", file=sys.stderr)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    names = list(contenders)
    reference = medians[names[0]]
    command = (f".venv/bin/python benchmarks/bench_loader.py --samples {args.samples} "
               f"--workers {args.workers} --repeats {args.repeats}")
    if args.batch_size != 64:
        command += f" --batch-size {args.batch_size}"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print("\n## Training input pipeline: openwit's loader vs open_clip's\n")
    print(f"Command: `{command}`")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {gpu}, Python "
          f"{platform.python_version()}, torch {torch.__version__}, Pillow {PIL.__version__}")
    print(f"Date: {datetime.date.today().isoformat()}\n")
    print(f"{args.samples} rendered 256x256 JPEGs (q95) in {len(urls)} shards; batch "
          f"{args.batch_size}, 224 px, {args.workers} workers, shuffle buffer "
          f"{args.shuffle_buffer}; one full pass per repeat, worker start-up included.\n")
    print(f"| loader | median images/s ({args.repeats} runs) | / reference |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {medians[name]:.0f} | {medians[name] / reference:.2f} |")
    ratio = medians[names[1]] / reference
    print(f"\n**openwit CPU / reference: {ratio:.2f}** (goal >= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
