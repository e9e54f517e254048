"""The flags of `openwit train`, one per `TrainConfig` field (kept free of torch imports, so
`openwit --help` stays fast)."""

from __future__ import annotations


def add_train_arguments(parser) -> None:
    from model.config import MODEL_CONFIGS  # plain dataclasses: no torch import

    g = parser.add_argument_group("data and output")
    g.add_argument("--shards", required=True,
                   help="shard folder, brace pattern (out/shards/{000000..000009}.tar), glob, or "
                        "s3:// / gs:// URLs; several joined with '::'")
    g.add_argument("--output", required=True, help="local folder for checkpoints and metrics")
    g.add_argument("--epoch-samples", type=int, default=None,
                   help="samples per epoch (default: the total of the shards' sizes.json)")
    g.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    g.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto",
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
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g = parser.add_argument_group("run")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps")
    g.add_argument("--log-every", type=int, default=10, help="steps")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/checkpoints/latest.pt (weights, optimizer, "
                        "schedule, data position)")
    g.add_argument("--stop-after-steps", type=int, default=None,
                   help="end this invocation after this many steps (resume later)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_eval_arguments(parser) -> None:
    g = parser.add_argument_group("what to evaluate")
    g.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by `openwit train`, or its run folder "
                        "(RUN/checkpoints/latest.pt is read)")
    g.add_argument("--output", default=None,
                   help="results JSON (default: eval.json in the checkpoint's run folder)")
    g.add_argument("--device", default="auto", help="auto (default): cuda if available, else cpu")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the probe's split and the k-shot draws (0)")
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
