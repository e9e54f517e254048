"""`openwit train`: a CLIP model learns from WebDataset shards, on a CPU or one or many GPUs.

The loop reads top to bottom: set up (distributed, device, tokenizer, model, optimizer,
schedule, data), maybe resume, then for each step: batch -> forward under autocast -> ClipLoss
-> backward -> clip -> AdamW -> schedule -> clamp the temperature -> log -> maybe checkpoint.

Data comes in resampled epochs (open_clip's --dataset-resampled): the batches of epoch e are a
function of (seed, e), so a checkpoint only has to remember (epoch, batch) to continue the data
exactly where it stopped, and a killed run resumed with `--resume` ends with the same weights as
one that was never interrupted (on the CPU; GPU kernels are not bit-deterministic).

A checkpoint is a plain dict: weights, optimizer, schedule, step, data position, random states,
the model config, the training config and the tokenizer (as JSON), so `openwit eval` needs
nothing else. It is written to a temporary name and renamed, so a crash mid-write leaves the
previous checkpoint intact.

Multi-GPU and multi-node: launch with `torchrun --nproc_per_node N -m openwit.pipeline.apps.cli train ...`;
each rank reads its own share of the shards, ClipLoss gathers the features of all ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import pickle
import random
import time

import numpy as np
import torch

from openwit.model.config import ModelConfig, model_config
from openwit.model.data import (
    TAR_ERRORS,
    LoaderConfig,
    apply_filesystem_flags,
    list_shards,
    make_loader,
    tar_members,
)
from openwit.model.loss import ClipLoss
from openwit.model.model import build_model, count_parameters
from openwit.model.options import TrainConfig
from openwit.model.tokenizer import Tokenizer
from openwit.pipeline.core import storage
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.secrets import without_secrets
from openwit.pipeline.core.layout import (
    CHECKPOINTS_FOLDER,
    LATEST_CHECKPOINT,
    METRICS_FILE,
    RUN_FILE,
    TOKENIZER_FILE,
)

LOGGER = logging.getLogger("openwit")
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- distributed


@dataclasses.dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return Distributed(torch.distributed.get_rank(), world_size, local_rank)


def choose_device(dist: Distributed) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def autocast_for(config: TrainConfig, device: torch.device):
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext, "fp32"
    return (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)), "bf16"


# ------------------------------------------------------------------------------ tokenizer


def captions_of(shard_urls, limit: int):
    """The first `limit` captions (the .txt members) of the shards, in shard order."""
    read = 0
    for url in shard_urls:
        try:
            with storage.open_read(url) as stream:
                for name, data in tar_members(stream):
                    if name.endswith(".txt") and data is not None:
                        yield data.decode("utf-8", "replace")
                        read += 1
                        if read >= limit:
                            return
        except TAR_ERRORS as error:  # the loader skips and counts the same shard later
            LOGGER.warning("tokenizer: %s is unreadable past some point (%s)", url, error)


def load_or_train_tokenizer(config: TrainConfig, model_cfg: ModelConfig, shard_urls,
                            context_length: int) -> Tokenizer:
    if config.tokenizer:
        return Tokenizer.from_str(storage.read_bytes(config.tokenizer).decode("utf-8"),
                                  context_length=context_length)
    vocab_size = config.vocab_size or model_cfg.text.vocab_size
    tokenizer = Tokenizer.train(captions_of(shard_urls, config.tokenizer_captions), vocab_size,
                                context_length=context_length)
    LOGGER.info("tokenizer: BPE with %s tokens trained on the shards' captions",
                f"{tokenizer.vocab_size:,}")
    return tokenizer


# ------------------------------------------------------------------------- optimisation


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on gains, biases, embeddings and the temperature."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = (parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
                  or name.endswith("class_token") or "positional" in name)
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------------------- checkpoints


def random_states() -> dict:
    """The generators' states as tensors, lists and numbers only, so that a checkpoint loads
    with `weights_only=True` (no pickled objects)."""
    version, words, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(words), gauss],
            "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state()}


def restore_random_states(states: dict) -> None:
    version, words, gauss = states["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Written so that a crash mid-write keeps the old one: under a temporary name and renamed
    in a folder, as one upload that commits at its end in a bucket (`storage.create_atomic`)."""
    with storage.create_atomic(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path: str) -> dict:
    """A checkpoint as saved (on the CPU). `weights_only=True`: tensors, containers and
    numbers only, so a checkpoint from someone else cannot run code when it is opened."""
    try:
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu",
                          weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ConfigError(f"{path} is not a checkpoint that loads safely (tensors, containers "
                          f"and numbers only): {str(err).splitlines()[0][:200]}") from err


def checkpoint_path(output: str, name: str = LATEST_CHECKPOINT) -> str:
    return storage.join(output, CHECKPOINTS_FOLDER, name)


# ---------------------------------------------------------------------------------- metrics


class MetricsLog:
    """One JSON object per logged step in OUTPUT/metrics.jsonl (and TensorBoard if installed,
    for a local OUTPUT). In a local folder each line is appended as it is logged; in a bucket,
    where an object cannot be appended to, the whole file is rewritten at each checkpoint and
    at the end (`flush`), so it holds what the checkpoint has."""

    def __init__(self, output: str, enabled: bool, resumed_at: int):
        self._enabled = enabled
        self._path = storage.join(output, METRICS_FILE)
        self._local = storage.is_local(output)
        self._lines: list[str] = []
        self._board = None
        if not enabled:
            return
        if storage.exists(self._path):  # drop lines past the step we resume from
            text = storage.read_bytes(self._path).decode("utf-8")
            self._lines = [line + "\n" for line in text.splitlines()
                           if line and json.loads(line)["step"] <= resumed_at]
        if self._local:
            os.makedirs(output, exist_ok=True)
            with open(self._path, "w") as f:
                f.writelines(self._lines)
        else:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._board = SummaryWriter(os.path.join(output, "tensorboard"))

    def write(self, record: dict) -> None:
        if not self._enabled:
            return
        line = json.dumps(record) + "\n"
        self._lines.append(line)
        if self._local:
            with open(self._path, "a") as f:
                f.write(line)
        if self._board is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "step":
                    self._board.add_scalar(name, value, record["step"])

    def flush(self) -> None:
        if self._enabled and not self._local:
            storage.write_bytes_atomic(self._path, "".join(self._lines).encode("utf-8"))

    def close(self) -> None:
        self.flush()
        if self._board is not None:
            self._board.close()


# ------------------------------------------------------------------------------ the run


def train(config: TrainConfig) -> dict:
    """Trains to the end (or `stop_after_steps`) and returns a summary of the run."""
    dist = setup_distributed()
    device = choose_device(dist)
    autocast, precision = autocast_for(config, device)
    torch.manual_seed(config.seed + dist.rank)
    random.seed(config.seed + dist.rank)
    np.random.seed(config.seed + dist.rank)

    apply_filesystem_flags(config.filesystem_flags)  # a bucket as the output, or the shards'
    resume_from = None
    if config.resume and storage.exists(checkpoint_path(config.output)):
        resume_from = load_checkpoint(checkpoint_path(config.output))
    model_cfg = (ModelConfig.from_dict(resume_from["model_config"]) if resume_from
                 else model_config(config.model))

    shards = list_shards(config.shards, config.filesystem_flags)
    epoch_samples = config.epoch_samples or shards.total_samples
    if not epoch_samples:
        raise ConfigError("the shards have no sizes.json: pass --epoch-samples")
    if resume_from:
        tokenizer = Tokenizer.from_str(resume_from["tokenizer"],
                                       context_length=model_cfg.text.context_length)
    else:
        tokenizer = load_or_train_tokenizer(config, model_cfg, shards.urls,
                                            model_cfg.text.context_length)
    if tokenizer.vocab_size > model_cfg.text.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"text tower takes {model_cfg.text.vocab_size}")

    model = build_model(model_cfg).to(device)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), eps=config.eps)
    batches_per_epoch = epoch_samples // dist.world_size // config.batch_size
    if batches_per_epoch < 1:
        raise ConfigError(f"{epoch_samples} samples per epoch make no batch of "
                         f"{config.batch_size} on {dist.world_size} rank(s)")
    total_steps = batches_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(min(config.warmup_steps, total_steps), total_steps))

    step = 0
    if resume_from:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        step = resume_from["step"]
        restore_random_states(resume_from["random"])
        LOGGER.info("resuming at step %d of %d", step, total_steps)

    trained: torch.nn.Module = model
    if config.compile:
        trained = torch.compile(trained)
    if dist.world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = ClipLoss()

    loader_config = LoaderConfig(
        shards=config.shards, batch_size=config.batch_size, workers=config.workers,
        image_size=model_cfg.vision.image_size, seed=config.seed, resampled=True,
        epoch_samples=epoch_samples, decode=config.decode,
        filesystem_flags=config.filesystem_flags)
    checkpoint_file = checkpoint_path(config.output)
    metrics = MetricsLog(config.output, dist.is_main, step)
    if dist.is_main:
        LOGGER.info("model %s: %s parameters on %s, %s; %d steps of %d x %d samples",
                    model_cfg.name, f"{count_parameters(model):,}", device, precision,
                    total_steps, config.batch_size, dist.world_size)
        if not resume_from:
            storage.write_bytes_atomic(storage.join(config.output, TOKENIZER_FILE),
                                       tokenizer.to_str().encode("utf-8"))
        storage.write_json_atomic(storage.join(config.output, RUN_FILE), {
            "train_config": without_secrets(config), "model_config": model_cfg.to_dict(),
            "world_size": dist.world_size, "total_steps": total_steps})

    def checkpoint(at_step: int) -> None:
        if not dist.is_main:
            return
        save_checkpoint(checkpoint_file, {
            "format": CHECKPOINT_FORMAT,
            "step": at_step,
            "total_steps": total_steps,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "random": random_states(),
            "model_config": model_cfg.to_dict(),
            "train_config": without_secrets(config),
            "tokenizer": tokenizer.to_str(),
        })
        metrics.flush()

    progress = None
    if config.progress and dist.is_main:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True)
    stop_at = total_steps if config.stop_after_steps is None else min(
        total_steps, step + config.stop_after_steps)
    skipped: dict[str, int] = {}
    losses: list[float] = []
    samples_per_step = config.batch_size * dist.world_size
    window_start, window_steps, data_seconds = time.perf_counter(), 0, 0.0
    run_start = time.perf_counter()
    description = ""

    while step < stop_at:
        epoch, first_batch = divmod(step, batches_per_epoch)
        loader = make_loader(loader_config, tokenizer.encode, epoch=epoch,
                             start_batch=first_batch, device=device, rank=dist.rank,
                             world_size=dist.world_size, shards=shards)
        description = loader.description
        waited = time.perf_counter()
        for images, tokens in loader:
            data_seconds += time.perf_counter() - waited
            trained.train()
            with autocast():
                image_features, text_features, logit_scale = trained(images, tokens)
                loss = loss_fn(image_features.float(), text_features.float(), logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            model.clamp_logit_scale_()
            step += 1
            window_steps += 1
            loss_value = loss.item()
            losses.append(loss_value)
            if progress is not None:
                progress.update(1)
            if step % config.log_every == 0 or step == stop_at:
                now = time.perf_counter()
                rate = window_steps * samples_per_step / max(now - window_start, 1e-9)
                for reason, n in loader.skipped.items():
                    skipped[reason] = skipped.get(reason, 0) + n
                loader.skipped.clear()
                record = {"step": step, "epoch": epoch,
                          "samples": step * config.batch_size * dist.world_size,
                          "loss": round(loss_value, 5),
                          "lr": scheduler.get_last_lr()[0],
                          "logit_scale": round(model.logit_scale.detach().exp().item(), 4),
                          "samples_per_s": round(rate, 1),
                          "data_fraction": round(data_seconds / max(now - window_start, 1e-9),
                                                 3),
                          "skipped": dict(skipped)}
                metrics.write(record)
                if progress is not None:
                    progress.set_postfix(loss=f"{loss_value:.3f}", samples_s=f"{rate:,.0f}")
                window_start, window_steps, data_seconds = now, 0, 0.0
            if step % config.checkpoint_every == 0 or step == stop_at:
                checkpoint(step)
            if step >= stop_at or step % batches_per_epoch == 0:
                break
            waited = time.perf_counter()

    if progress is not None:
        progress.close()
    metrics.close()
    if dist.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"rank": dist.rank, "world_size": dist.world_size,
            "steps": step, "total_steps": total_steps, "finished": step >= total_steps,
            "losses": losses, "seconds": round(time.perf_counter() - run_start, 1),
            "data": description, "precision": precision, "device": str(device),
            "skipped": skipped, "checkpoint": checkpoint_file}


def format_run(run: dict) -> str:
    losses = run["losses"]
    lines = [run["data"],
             f"{run['steps']} of {run['total_steps']} steps on {run['device']} ({run['precision']})"
             f" in {run['seconds']:.0f} s" + ("" if run["finished"] else ": stopped early, "
                                               "continue with --resume")]
    if losses:
        window = max(1, min(10, len(losses) // 4))
        first = sum(losses[:window]) / window
        last = sum(losses[-window:]) / window
        lines.append(f"loss {first:.3f} (first {window} steps) -> {last:.3f} (last {window})")
    if run["skipped"]:
        lines.append("skipped samples: " + ", ".join(f"{reason} {n}" for reason, n in
                                                     sorted(run["skipped"].items())))
    lines.append(f"checkpoint: {run['checkpoint']}")
    return "\n".join(lines)
