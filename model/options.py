"""`openwit train` and `openwit eval`: their config dataclasses, their flags and the
conversion from parsed flags to config, side by side. Free of torch, so that parsing a command
line (and `openwit --help`) does not load it."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from openwit.model.config import MODEL_CONFIGS  # plain dataclasses: no torch import
from openwit.pipeline.core import storage
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.flags import add_output_flag, add_seed_flag
from openwit.pipeline.core.layout import CHECKPOINTS_FOLDER, EVAL_FILE, LATEST_CHECKPOINT

PRECISIONS = ("auto", "fp32", "bf16")
DECODE_CHOICES = ("auto", "cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    shards: str  # a shard spec as model.data.list_shards reads it (folder, braces, s3://...)
    output: str
    model: str = "tiny"
    batch_size: int = 64  # per rank
    epochs: int = 1
    epoch_samples: int | None = None  # default: the shards' total from sizes.json
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    grad_checkpointing: bool = False
    workers: int = 2
    decode: str = "auto"  # auto | cpu | gpu (see model.data)
    checkpoint_every: int = 100  # steps; the last step always writes one
    log_every: int = 10
    seed: int = 0
    tokenizer: str | None = None  # a tokenizer JSON; default: train one on the shards' captions
    vocab_size: int | None = None  # for a trained tokenizer; default: the model config's
    tokenizer_captions: int = 200_000  # captions read to train the tokenizer
    # Beam flags for s3:// / gs:// shards; they may hold credentials: never shown or saved
    # (core/secrets.py).
    filesystem_flags: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    resume: bool = False
    stop_after_steps: int | None = None  # end this run early (a planned interruption)
    progress: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.decode not in DECODE_CHOICES:
            raise ConfigError(f"--decode must be one of {', '.join(DECODE_CHOICES)}, "
                              f"not {self.decode!r}")
        for flag, value in (("--batch-size", self.batch_size), ("--epochs", self.epochs),
                            ("--checkpoint-every", self.checkpoint_every),
                            ("--log-every", self.log_every)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1")
        if self.workers < 0 or self.warmup_steps < 0:
            raise ConfigError("--workers and --warmup-steps must be at least 0")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ConfigError("--epoch-samples must be at least 1")
        if not self.lr > 0:
            raise ConfigError("--lr must be positive")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    checkpoint: str  # a checkpoint file, or a run folder (its checkpoints/latest.pt)
    dataset: str | None = None  # image folder for zero-shot and linear probe
    class_names: str | None = None  # optional names file (see load_class_names)
    templates: str = "both"  # "single" | "ensemble" | "both" | path to a template file
    retrieval_shards: str | None = None  # a shard spec as model.data.list_shards reads it
    retrieval_samples: int = 1000  # the first N pairs, in shard order
    linear_probe: bool = True
    k_shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    output: str | None = None  # results JSON; None: not written
    # Beam flags for s3:// / gs:// inputs; never shown or saved (core/secrets.py).
    filesystem_flags: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self):
        if not self.dataset and not self.retrieval_shards:
            raise ConfigError("nothing to evaluate: give a dataset (--dataset) and/or "
                              "retrieval shards (--retrieval-shards)")
        if self.retrieval_samples < 1 or self.batch_size < 1:
            raise ConfigError("--retrieval-samples and --batch-size must be at least 1")
        if any(k < 1 for k in self.k_shots):
            raise ConfigError(f"--k-shots must be positive, got {list(self.k_shots)}")


# ---------------------------------------------------------------------------------- train


def add_train_flags(parser) -> None:

    g = parser.add_argument_group("data and output")
    g.add_argument("--shards", required=True,
                   help="shard folder, brace pattern (out/shards/{000000..000009}.tar), glob, or "
                        "s3:// / gs:// URLs; several joined with '::'")
    add_output_flag(g, required=True, help="folder or bucket prefix (s3://, gs://) for "
                    "checkpoints, metrics.jsonl and the tokenizer")
    g.add_argument("--epoch-samples", type=int, default=None,
                   help="samples per epoch (default: the total of the shards' sizes.json)")
    g.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    g.add_argument("--decode", choices=DECODE_CHOICES, default="auto",
                   help="where JPEGs are decoded: gpu = nvjpeg (needs CUDA and torchvision)")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="tiny", choices=list(MODEL_CONFIGS))
    g.add_argument("--tokenizer", default=None,
                   help="a tokenizer JSON; default: train a BPE on the shards' captions")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="vocabulary of a trained tokenizer (default: the model's)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=64, help="per rank")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--weight-decay", type=float, default=0.2)
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0: off")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action="store_true")
    add_seed_flag(g)
    g = parser.add_argument_group("run")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps")
    g.add_argument("--log-every", type=int, default=10, help="steps")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/checkpoints/latest.pt (weights, optimizer, "
                        "schedule, data position)")
    g.add_argument("--stop-after-steps", type=int, default=None,
                   help="end this invocation after this many steps (resume later)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_config(args, filesystem_flags: Sequence[str]) -> TrainConfig:
    """`openwit train`'s parsed flags -> TrainConfig; `filesystem_flags` are the Beam flags
    among the arguments (checked by the CLI), for remote shards (--s3_endpoint_url ...)."""
    if args.tokenizer and not storage.exists(args.tokenizer):
        raise ConfigError(f"--tokenizer {args.tokenizer!r} does not exist")
    return TrainConfig(
        shards=args.shards, output=args.output, model=args.model, batch_size=args.batch_size,
        epochs=args.epochs, epoch_samples=args.epoch_samples, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip, precision=args.precision, compile=args.compile,
        grad_checkpointing=args.grad_checkpointing, workers=args.workers, decode=args.decode,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed,
        tokenizer=args.tokenizer, vocab_size=args.vocab_size,
        filesystem_flags=tuple(filesystem_flags), resume=args.resume,
        stop_after_steps=args.stop_after_steps, progress=not args.no_progress)


# ----------------------------------------------------------------------------------- eval


def add_eval_flags(parser) -> None:
    g = parser.add_argument_group("what to evaluate")
    g.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by `openwit train`, or its run folder "
                        "(RUN/checkpoints/latest.pt is read)")
    add_output_flag(g, help="results JSON (default: eval.json in the checkpoint's run folder)")
    g.add_argument("--device", default="auto", help="auto (default): cuda if available, else cpu")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64)")
    add_seed_flag(g, help="seeds the probe's split and the k-shot draws (0)")
    g = parser.add_argument_group("zero-shot classification and linear probe")
    g.add_argument("--dataset", default=None,
                   help="image folder: one subfolder per class (or train/ val/ test/ folders "
                        "of class subfolders)")
    g.add_argument("--class-names", default=None,
                   help="names file: 'folder<TAB>name' lines, or one name per line in sorted "
                        "folder order (default: folder names, '_' read as a space)")
    g.add_argument("--templates", default="both",
                   help="single, ensemble, both (default), or a file of templates (one per "
                        "line, with {} for the class name; evaluated beside the built-in sets)")
    g.add_argument("--no-linear-probe", action="store_true", help="zero-shot only")
    g.add_argument("--k-shots", type=int, nargs="*", default=[1, 2, 4, 8, 16],
                   help="few-shot probes: training images per class (default 1 2 4 8 16; "
                        "the flag alone: none)")
    g = parser.add_argument_group("retrieval")
    g.add_argument("--retrieval-shards", default=None,
                   help="held-out shards: folder, brace pattern, glob or s3:// / gs:// URLs")
    g.add_argument("--retrieval-samples", type=int, default=1000,
                   help="the first N pairs in shard order (1000)")


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file as given, or a run folder's checkpoints/latest.pt."""
    if storage.is_local(path):
        is_folder = os.path.isdir(path)
    else:  # a bucket has no folders: a path that is no object is a run folder's prefix
        is_folder = not storage.exists(path)
    return storage.join(path, CHECKPOINTS_FOLDER, LATEST_CHECKPOINT) if is_folder else path


def default_eval_output(checkpoint_path: str) -> str:
    """eval.json in the run folder: beside checkpoints/ for RUN/checkpoints/latest.pt, else
    beside the checkpoint file."""
    folder = os.path.dirname(resolve_checkpoint(checkpoint_path))
    if os.path.basename(folder) == CHECKPOINTS_FOLDER:
        folder = os.path.dirname(folder)
    return storage.join(folder, EVAL_FILE)


def eval_config(args, filesystem_flags: Sequence[str]) -> EvalConfig:
    """`openwit eval`'s parsed flags -> EvalConfig; `filesystem_flags` are the Beam flags
    among the arguments (checked by the CLI), for s3:// / gs:// checkpoints and shards."""
    return EvalConfig(
        checkpoint=args.checkpoint, dataset=args.dataset, class_names=args.class_names,
        templates=args.templates, retrieval_shards=args.retrieval_shards,
        retrieval_samples=args.retrieval_samples, linear_probe=not args.no_linear_probe,
        k_shots=tuple(args.k_shots), batch_size=args.batch_size, seed=args.seed,
        device=args.device, output=args.output or default_eval_output(args.checkpoint),
        filesystem_flags=tuple(filesystem_flags))
