"""CLIP training throughput: samples/s of a model on real shards (through model/data.py) and on
synthetic batches already in memory, in the same run, and what the loader costs.

    .venv/bin/python benchmarks/bench_train.py --model tiny --batch-size 64 --steps 30 --repeats 3
    .venv/bin/python benchmarks/bench_train.py --model vit-b-32 --batch-size 256 --precision bf16

On a GPU it also reports model FLOPs utilisation (FLOPs of one training step counted by
torch's FlopCounterMode, times steps/s, over the device's peak dense bf16 FLOPs given by
--peak-tflops, default the H100 SXM's 989) and, when torchvision is importable, both decode
paths (--decode cpu and gpu). Shards: the loader benchmark's (benchmarks/bench_loader.py
writes them; reused when present), or --shards.

Each repeat builds a fresh model and optimizer, runs --warmup steps untimed, then times --steps
steps; medians over --repeats. "Loader cost" is 1 - (synthetic step time / real step time): the
share of a real step spent waiting for data (goal: under 10%).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from openwit.model.config import model_config  # noqa: E402
from openwit.model.data import LoaderConfig, list_shards, make_loader  # noqa: E402
from openwit.model.loss import ClipLoss  # noqa: E402
from openwit.model.model import build_model  # noqa: E402
from openwit.model.options import TrainConfig  # noqa: E402
from openwit.model.train import autocast_for, parameter_groups  # noqa: E402


def hashed_tokens(context: int, vocab: int):
    """A tokenizer stand-in (words hashed to ids): the benchmark measures the model and data,
    not BPE quality."""
    import zlib

    def encode(texts):
        out = torch.zeros(len(texts), context, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [1] + [3 + zlib.crc32(w.encode()) % (vocab - 3) for w in text.lower().split()]
            ids = ids[:context - 1] + [2]
            out[row, :len(ids)] = torch.tensor(ids)
        return out

    return encode


def one_step(model, optimizer, loss_fn, autocast, images, tokens):
    with autocast():
        image_features, text_features, scale = model(images, tokens)
        loss = loss_fn(image_features.float(), text_features.float(), scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    model.clamp_logit_scale_()


def synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(args, device):
    torch.manual_seed(0)
    model = build_model(args.model).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.2), lr=1e-4)
    return model, optimizer


def time_synthetic(args, device, autocast) -> float:
    config = model_config(args.model)
    model, optimizer = fresh_model(args, device)
    loss_fn = ClipLoss()
    size = config.vision.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    tokens = torch.randint(3, config.text.vocab_size, (args.batch_size, 77), device=device)
    tokens[:, -1] = 2
    for _ in range(args.warmup):
        one_step(model, optimizer, loss_fn, autocast, images, tokens)
    synchronise(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        one_step(model, optimizer, loss_fn, autocast, images, tokens)
    synchronise(device)
    return (time.perf_counter() - started) / args.steps


def time_real(args, device, autocast, decode: str) -> tuple[float, str]:
    config = model_config(args.model)
    model, optimizer = fresh_model(args, device)
    loss_fn = ClipLoss()
    shards = list_shards(args.shards)
    loader = make_loader(
        LoaderConfig(shards=args.shards, batch_size=args.batch_size, workers=args.workers,
                     image_size=config.vision.image_size, resampled=True,
                     epoch_samples=args.batch_size * (args.warmup + args.steps),
                     decode=decode),
        hashed_tokens(77, config.text.vocab_size), device=device, shards=shards)
    batches = iter(loader)
    for _ in range(args.warmup):  # includes worker start-up
        one_step(model, optimizer, loss_fn, autocast, *next(batches))
    synchronise(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        one_step(model, optimizer, loss_fn, autocast, *next(batches))
    synchronise(device)
    return (time.perf_counter() - started) / args.steps, loader.description


def step_flops(args, device, autocast) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    config = model_config(args.model)
    model, optimizer = fresh_model(args, device)
    size = config.vision.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    tokens = torch.randint(3, config.text.vocab_size, (args.batch_size, 77), device=device)
    tokens[:, -1] = 2
    counter = FlopCounterMode(display=False)
    with counter:
        one_step(model, optimizer, ClipLoss(), autocast, images, tokens)
    return counter.get_total_flops()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--shards", default=None,
                        help="default: the loader benchmark's shards (written if missing)")
    parser.add_argument("--samples", type=int, default=3000, help="shards to write if needed")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's peak dense bf16 TFLOP/s (H100 SXM: 989)")
    args = parser.parse_args(argv)

    if args.shards is None:
        import tempfile

        import bench_loader

        args.shards = os.path.join(tempfile.gettempdir(), f"openwit_bench_loader_{args.samples}")
        bench_loader.write_shards(args.shards, args.samples)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast, precision = autocast_for(
        TrainConfig(shards="", output="", precision=args.precision), device)
    decodes = ["cpu"]
    if device.type == "cuda":
        from openwit.model.data import choose_decode

        if choose_decode("gpu")[0]:
            decodes.append("gpu")

    synthetic, real = [], {decode: [] for decode in decodes}
    description = {}
    for repeat in range(args.repeats):
        synthetic.append(time_synthetic(args, device, autocast))
        for decode in decodes:
            seconds, description[decode] = time_real(args, device, autocast, decode)
            real[decode].append(seconds)
        print(f"repeat {repeat + 1}: synthetic {synthetic[-1] * 1e3:.1f} ms/step, " + ", ".join(
            f"{d} decode {real[d][-1] * 1e3:.1f} ms/step" for d in decodes), flush=True)

    synthetic_step = statistics.median(synthetic)
    flops = step_flops(args, device, autocast)
    print(f"\n{args.model}, batch {args.batch_size}, {precision} on {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'CPU'},"
          f" {torch.get_num_threads()} threads); {flops / 1e9:,.1f} GFLOP per step")
    print(f"synthetic in-memory batches: {args.batch_size / synthetic_step:,.1f} samples/s "
          f"({synthetic_step * 1e3:.1f} ms/step)")
    lines = []
    for decode in decodes:
        step = statistics.median(real[decode])
        cost = 1 - synthetic_step / step
        line = (f"real shards, {decode} decode: {args.batch_size / step:,.1f} samples/s "
                f"({step * 1e3:.1f} ms/step); loader cost {cost:.1%} (goal < 10%)")
        print(line + f"\n  {description[decode]}")
        lines.append((decode, step, cost))
    if device.type == "cuda":
        achieved = flops / synthetic_step
        print(f"model FLOPs utilisation: {achieved / 1e12:,.1f} TFLOP/s of {args.peak_tflops:g} "
              f"= {achieved / (args.peak_tflops * 1e12):.1%}")

    print("\n--- for benchmarks/RESULTS.md ---\n")
    print(f"Command: `.venv/bin/python benchmarks/bench_train.py {' '.join(sys.argv[1:])}`".rstrip())
    print(f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
          f"{device} ({precision}); date {datetime.date.today().isoformat()}; medians of "
          f"{args.repeats}.\n")
    print("| batches | samples/s | ms/step | loader cost |\n|---|---|---|---|")
    print(f"| synthetic, in memory | {args.batch_size / synthetic_step:,.1f} | "
          f"{synthetic_step * 1e3:.1f} | - |")
    for decode, step, cost in lines:
        print(f"| real shards, {decode} decode, {args.workers} workers | "
              f"{args.batch_size / step:,.1f} | {step * 1e3:.1f} | {cost:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
