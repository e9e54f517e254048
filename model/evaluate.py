"""`openwit eval`: how good is a checkpoint? The three measurements of the CLIP paper.

1. Zero-shot classification on an image folder (one subfolder per class). Each class becomes a
   classifier row built from prompt templates: every template filled with the class name,
   tokenised, embedded and L2-normalised; the template embeddings averaged and the mean
   renormalised (the paper's prompt ensembling, section 3.1.4). Reported for the single
   template "a photo of a {}.", for a built-in ensemble and for a user's template file:
   top-1, top-5 (top-min(5, classes)), accuracy per class, confusion matrix, chance.
2. Retrieval on held-out shards: image->text and text->image recall@1/5/10 over the first N
   (image, caption) pairs in shard order. A hit is the pair's own item (text i for image i),
   the standard definition; web captions repeat, so retrieving another pair's identical
   caption is not a hit, and exact ties are shared out (see `retrieval_recall`).
3. Linear probe: L-BFGS logistic regression (scikit-learn) on the frozen, L2-normalised image
   features. The inverse regularisation C is swept over a log grid and chosen on a validation
   split, the model refitted on train + validation and scored on test; then k-shot variants
   (k images per class drawn from the train split, averaged over a few seeds).

Image preprocessing is the training loader's evaluation path (`LoaderConfig(augment=False)`):
centre square crop of the short side, bicubic resize to the model's image size, CLIP's mean
and std. Folder images go through `model.data.decode_for_eval`, shard images through the
loader itself, so there is one pipeline, not two.

Dataset layout: DATASET/<class folder>/<image files>. Zero-shot uses every image; the linear
probe splits them 50/25/25 per class (seeded). When DATASET has train/ and test/ (and
optionally val/) folders, each holding class folders, those are the splits instead: zero-shot
runs on test/, and the probe's validation set is carved out of train/ when val/ is missing.
Class names are folder names with '_' read as a space, unless a names file says otherwise.
Unreadable or undecodable files are skipped and counted by reason, never fatal.

Results: `evaluate` returns a dict and writes it as JSON when `EvalConfig.output` is set;
`openwit eval` always writes one, by default eval.json in the checkpoint's run folder (RUN/ for
RUN/checkpoints/latest.pt). Top level: checkpoint, model, step, device, then one section per
evaluation asked for (zero_shot, retrieval, linear_probe; absent when not asked for, listed in
not_run when asked for but impossible), seconds, config. The HTML report reads these keys.

Reads top to bottom: configuration, templates and class names, loading a checkpoint, reading
an image folder, zero-shot, retrieval, linear probe, `evaluate` tying them together, then the
printed table.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import time
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from openwit.model.config import ModelConfig
from openwit.model.data import (
    CLIP_MEAN,
    CLIP_STD,
    LoaderConfig,
    SampleError,
    apply_filesystem_flags,
    decode_for_eval,
    list_shards,
    make_loader,
    normalise_uint8,
)
from openwit.model.model import CLIP, build_model
from openwit.model.tokenizer import Tokenizer
from openwit.model.options import EvalConfig, resolve_checkpoint
from openwit.model.train import load_checkpoint
from openwit.pipeline.core import storage
from openwit.pipeline.core.errors import ConfigError
from openwit.pipeline.core.secrets import without_secrets

LOGGER = logging.getLogger("openwit")


# The paper's baseline prompt.
SINGLE_TEMPLATES = ("a photo of a {}.",)

# Our own ensemble, in the spirit of the paper's: the base prompt, then variations on photo
# quality, object size and framing, and on art styles and renderings, so that the averaged
# embedding describes the class rather than one way of depicting it.
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of the {}.",
    "an out of focus picture of a {}.",
    "a grainy snapshot of a {}.",
    "a badly lit photo of the {}.",
    "a brightly lit picture of a {}.",
    "a black and white picture of the {}.",
    "a cropped picture of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a tiny {} in the corner of the picture.",
    "a large {} filling the frame.",
    "the {} seen from up close.",
    "a {} on a plain background.",
    "a drawing of a {}.",
    "a sketch of the {}.",
    "a painting of a {}.",
    "a watercolour of a {}.",
    "a crayon drawing of the {}.",
    "a sticker of a {}.",
    "an icon of a {}.",
    "a flat vector illustration of a {}.",
    "a cartoon picture of a {}.",
    "a pixel art {}.",
    "a {} rendered in 3d.",
)

TEMPLATE_CHOICES = ("single", "ensemble", "both")

# Inverse regularisation strengths for the probe: 1e-2..1e6 in 17 half-decade steps. The
# paper sweeps 1e-6..1e6; the features here are unit vectors whose class differences are
# small (a briefly trained model's image features have a mean cosine similarity near 0.45),
# so weak regularisation (large C) is where the useful values lie and the grid leans there.
LINEAR_PROBE_C_GRID = tuple(float(10.0 ** (exponent / 2)) for exponent in range(-4, 13))
LINEAR_PROBE_MAX_ITER = 1000  # the paper's L-BFGS limit
PROBE_SPLIT_FRACTIONS = (0.5, 0.25, 0.25)  # train, validation, test, per class
K_SHOT_REPEATS = 3  # k-shot accuracy is the mean over this many draws of the k images

PREDEFINED_SPLITS = ("train", "val", "test")
IMAGE_FILE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# Reasons an image-folder file is skipped, besides the loader's own (model.data.BAD_IMAGE).
NOT_AN_IMAGE_FILE = "not_an_image_file"  # extension is not an image's
UNREADABLE_FILE = "unreadable_file"  # open() or read() failed
SKIPPED_FILES_LISTED = 20  # how many skipped files the results name, with their errors


# ----------------------------------------------------------------- templates and class names


def load_templates(spec: str) -> dict[str, tuple[str, ...]]:
    """Template sets to evaluate, by name: "single", "ensemble", both, or a file (one
    template per line, each with a `{}` for the class name; blank lines and # comments are
    ignored), which is evaluated as "file" beside the two built-in sets."""
    built_in = {"single": SINGLE_TEMPLATES, "ensemble": ENSEMBLE_TEMPLATES}
    if spec in ("single", "ensemble"):
        return {spec: built_in[spec]}
    if spec == "both":
        return built_in
    if not os.path.isfile(spec):
        raise ConfigError(f"--templates must be single, ensemble, both or a template file; "
                          f"{spec!r} is none of those")
    templates = []
    with open(spec, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "{}" not in line:
                raise ConfigError(f"{spec}, line {number}: a template needs {{}} where the class "
                                  f"name goes: {line!r}")
            templates.append(line)
    if not templates:
        raise ConfigError(f"{spec} holds no templates")
    return {**built_in, "file": tuple(templates)}


def fill_template(template: str, class_name: str) -> str:
    # Not str.format: a template may hold other braces, and a class name may too.
    return template.replace("{}", class_name)


def default_class_name(folder: str) -> str:
    return folder.replace("_", " ")


def load_class_names(path: str, folders: Sequence[str]) -> list[str]:
    """Class names for the (sorted) class folders from a names file: either every line is
    `folder<TAB>name`, or every line is a name, one per folder in sorted-folder order."""
    if not os.path.isfile(path):
        raise ConfigError(f"--class-names {path!r} is not a file")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f if line.strip()]
    tabbed = ["\t" in line for line in lines]
    if all(tabbed):
        mapping = {}
        for line in lines:
            folder, name = line.split("\t", 1)
            mapping[folder.strip()] = name.strip()
        missing = [folder for folder in folders if folder not in mapping]
        if missing:
            raise ConfigError(f"{path} names no class for folder(s) {', '.join(missing)}")
        names = [mapping[folder] for folder in folders]
    elif not any(tabbed):
        if len(lines) != len(folders):
            raise ConfigError(f"{path} has {len(lines)} names for {len(folders)} class folders "
                              "(one name per line, in sorted folder order)")
        names = [line.strip() for line in lines]
    else:
        raise ConfigError(f"{path} mixes 'folder<TAB>name' lines with plain names")
    if not all(names):
        raise ConfigError(f"{path} gives an empty class name")
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:
        raise ConfigError(f"{path} gives several folders the same name: {', '.join(repeated)}")
    return names


# ------------------------------------------------------------------------ the checkpoint


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def model_from_checkpoint(checkpoint: Mapping, device: torch.device | str
                          ) -> tuple[CLIP, Tokenizer]:
    """The model (in eval mode, on `device`) and tokenizer a checkpoint dict carries."""
    model_cfg = ModelConfig.from_dict(checkpoint["model_config"])
    model = build_model(model_cfg)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    tokenizer = Tokenizer.from_str(checkpoint["tokenizer"],
                                   context_length=model_cfg.text.context_length)
    return model, tokenizer


def load_for_eval(checkpoint_path: str, device: torch.device | str) -> tuple[CLIP, Tokenizer]:
    """What `openwit train` saved (a file, or a run folder), ready to embed with."""
    return model_from_checkpoint(load_checkpoint(resolve_checkpoint(checkpoint_path)), device)


# ------------------------------------------------------------------------ the image folder


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    root: str
    folders: tuple[str, ...]  # class folders, sorted; a label is an index into this
    names: tuple[str, ...]  # the class names prompts use, in the same order
    # "all" (one folder of classes) or "train"/"val"/"test" -> (file path, label) pairs
    splits: Mapping[str, tuple[tuple[str, int], ...]]

    @property
    def predefined_splits(self) -> bool:
        return "all" not in self.splits


def _class_folders(root: str) -> list[str]:
    return sorted(entry.name for entry in os.scandir(root)
                  if entry.is_dir() and not entry.name.startswith("."))


def _files_in(folder: str) -> list[str]:
    # Files directly inside the class folder, sorted so that every run reads the same order.
    return sorted(entry.path for entry in os.scandir(folder)
                  if entry.is_file() and not entry.name.startswith("."))


def read_image_dataset(root: str, class_names_file: str | None = None) -> ImageDataset:
    """List an image-folder dataset (see the module docstring for the two layouts)."""
    if not os.path.isdir(root):
        raise ConfigError(f"--dataset {root!r} is not a folder")
    split_roots = {split: os.path.join(root, split) for split in PREDEFINED_SPLITS
                   if os.path.isdir(os.path.join(root, split))}
    # train/ and test/ holding class folders make a split layout; anything else (including
    # classes that happen to be called "train" and "test", holding images) is one set.
    if not ("train" in split_roots and "test" in split_roots
            and _class_folders(split_roots["train"]) and _class_folders(split_roots["test"])):
        split_roots = {"all": root}
    folders = sorted({folder for split_root in split_roots.values()
                      for folder in _class_folders(split_root)})
    if len(folders) < 2:
        raise ConfigError(f"{root} needs at least two class folders, found {len(folders)}")
    if class_names_file:
        names = load_class_names(class_names_file, folders)
    else:
        names = [default_class_name(folder) for folder in folders]
    splits = {}
    for split, split_root in split_roots.items():
        files = []
        for label, folder in enumerate(folders):
            class_folder = os.path.join(split_root, folder)
            if os.path.isdir(class_folder):
                files.extend((path, label) for path in _files_in(class_folder))
        splits[split] = tuple(files)
    return ImageDataset(root, tuple(folders), tuple(names), splits)


@dataclasses.dataclass
class EmbeddedImages:
    features: torch.Tensor  # float32 [n, dim], unit rows, on the CPU
    labels: torch.Tensor  # int64 [n]
    skipped: dict[str, int]  # reason -> files skipped
    skipped_files: list[dict]  # the first few: path, reason, error


def _has_image_extension(path: str) -> bool:
    _, extension = os.path.splitext(path)
    return extension[1:].lower() in IMAGE_FILE_EXTENSIONS


@torch.no_grad()
def embed_image_files(model: CLIP, files: Sequence[tuple[str, int]], batch_size: int,
                      device: torch.device | str) -> EmbeddedImages:
    """Decode, preprocess and embed labelled image files; skip (and count) the bad ones."""
    skipped: collections.Counter = collections.Counter()
    skipped_files: list[dict] = []
    features: list[torch.Tensor] = []
    labels: list[int] = []
    pending: list[np.ndarray] = []

    def skip(path: str, reason: str, error: BaseException | None) -> None:
        skipped[reason] += 1
        if len(skipped_files) < SKIPPED_FILES_LISTED:
            skipped_files.append({"path": path, "reason": reason,
                                  "error": "" if error is None else repr(error)})
        LOGGER.debug("eval: skipped %s (%s): %r", path, reason, error)

    def embed_pending() -> None:
        pixels = torch.from_numpy(np.ascontiguousarray(np.stack(pending).transpose(0, 3, 1, 2)))
        images = normalise_uint8(pixels.to(device), CLIP_MEAN, CLIP_STD)
        features.append(F.normalize(model.encode_image(images).float(), dim=-1).cpu())
        pending.clear()

    for path, label in files:
        if not _has_image_extension(path):
            skip(path, NOT_AN_IMAGE_FILE, None)
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as error:
            skip(path, UNREADABLE_FILE, error)
            continue
        try:
            pending.append(decode_for_eval(data, model.image_size, url=path))
        except SampleError as error:
            skip(path, error.reason, error.cause)
            continue
        labels.append(label)
        if len(pending) == batch_size:
            embed_pending()
    if pending:
        embed_pending()
    if skipped:
        LOGGER.warning("eval: skipped %s", ", ".join(f"{n} {reason}" for reason, n in
                                                      sorted(skipped.items())))
    dim = model.config.embed_dim
    return EmbeddedImages(
        features=torch.cat(features) if features else torch.zeros(0, dim),
        labels=torch.tensor(labels, dtype=torch.long), skipped=dict(skipped),
        skipped_files=skipped_files)


# ------------------------------------------------------------------------------ zero-shot


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, class_names: Sequence[str],
                         templates: Sequence[str], device: torch.device | str,
                         batch_size: int = 256) -> torch.Tensor:
    """[n_classes, dim] unit rows on the CPU: per class, the mean of its templates' unit
    text embeddings, renormalised. `model` needs only `encode_text(tokens)`."""
    texts = [fill_template(template, name) for name in class_names for template in templates]
    embeddings = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer.encode(texts[start:start + batch_size]).to(device)
        embeddings.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    per_template = torch.cat(embeddings).view(len(class_names), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def zero_shot_scores(image_features: torch.Tensor, labels: torch.Tensor,
                     classifier: torch.Tensor, class_names: Sequence[str] | None = None
                     ) -> dict:
    """Classify each image as its most similar classifier row.

    Returns top1, top5 (the true class among the min(5, n_classes) best), per_class
    (accuracy by class name; None for a class with no images) and confusion (rows: true
    class, columns: predicted class, in classifier order)."""
    if len(labels) == 0:
        raise ValueError("zero-shot scoring needs at least one image")
    n_classes = classifier.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    labels = labels.long().cpu()
    scores = F.normalize(image_features.float().cpu(), dim=-1) @ classifier.float().cpu().T
    top = scores.topk(min(5, n_classes), dim=1).indices
    predicted = top[:, 0]
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = {}
    for label, name in enumerate(names):
        images = int(confusion[label].sum())
        per_class[name] = int(confusion[label, label]) / images if images else None
    # Counts divided in Python: a float32 mean would print 0.1033333316 for 31/300.
    return {"top1": int((predicted == labels).sum()) / len(labels),
            "top5": int((top == labels[:, None]).any(dim=1).sum()) / len(labels),
            "per_class": per_class,
            "confusion": confusion.tolist()}


def run_zero_shot(model: CLIP, tokenizer: Tokenizer, dataset: ImageDataset,
                  images: EmbeddedImages, template_sets: Mapping[str, Sequence[str]],
                  device: torch.device, template_file: str | None) -> dict:
    by_templates = {}
    for set_name, templates in template_sets.items():
        classifier = zero_shot_classifier(model, tokenizer, dataset.names, templates, device)
        scores = zero_shot_scores(images.features, images.labels, classifier, dataset.names)
        by_templates[set_name] = {"templates": len(templates), **scores}
        if set_name == "file":
            by_templates[set_name]["path"] = template_file
    n_classes = len(dataset.names)
    return {"dataset": dataset.root, "split": "test" if dataset.predefined_splits else "all",
            "classes": list(dataset.names), "folders": list(dataset.folders),
            "images": len(images.labels), "chance": 1 / n_classes, "top5_k": min(5, n_classes),
            "by_templates": by_templates, "skipped": images.skipped,
            "skipped_files": images.skipped_files}


# ------------------------------------------------------------------------------ retrieval


def _expected_hits_at(queries: torch.Tensor, gallery: torch.Tensor, ks: Sequence[int],
                      chunk_rows: int = 1024) -> dict[str, float]:
    """Mean over queries i of the expected hit of gallery item i in the top k."""
    # Exact ties need identical gallery rows to score bitwise the same, which one matrix
    # product does not promise across columns: score each distinct row once, then copy.
    distinct, copy_of = torch.unique(gallery, dim=0, return_inverse=True)
    hits = torch.zeros(len(ks), dtype=torch.float64)
    for start in range(0, len(queries), chunk_rows):
        scores = (queries[start:start + chunk_rows] @ distinct.T)[:, copy_of]
        rows = torch.arange(scores.shape[0])
        own = scores[rows, start + rows][:, None]
        above = (scores > own).sum(dim=1).double()
        tied = (scores == own).sum(dim=1).double() - 1  # other items level with the own one
        for index, k in enumerate(ks):
            hits[index] += ((k - above) / (tied + 1)).clamp(0, 1).sum()
    return {f"R@{k}": float(hits[index] / len(queries)) for index, k in enumerate(ks)}


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k both ways for pairs (image i, text i); features are compared by dot product
    (cosine similarity for the unit vectors `encode_image`/`encode_text` return).

    A hit for image i at k means its own text i is among the k best-scoring texts (and the
    other way round for text->image), the standard definition: web captions repeat, and
    retrieving another pair's identical caption is not a hit. Identical captions embed
    identically and so tie exactly; ties are shared out as the expected hit under a random
    order among the tied items: with g items strictly above and t others tied, the hit counts
    clip((k - g) / (t + 1), 0, 1). A repeated caption thus costs what chance among its copies
    costs, and a model whose features are all the same scores k/N, not 1."""
    if image_features.shape != text_features.shape:
        raise ValueError(f"need one text per image: {tuple(image_features.shape)} images, "
                         f"{tuple(text_features.shape)} texts")
    image_features, text_features = image_features.float().cpu(), text_features.float().cpu()
    return {"image_to_text": _expected_hits_at(image_features, text_features, ks),
            "text_to_image": _expected_hits_at(text_features, image_features, ks)}


@torch.no_grad()
def embed_shard_pairs(model: CLIP, tokenizer: Tokenizer, shards: str, samples: int,
                      batch_size: int, device: torch.device,
                      filesystem_flags: Sequence[str] = ()) -> dict:
    """The first `samples` complete (image, caption) pairs of the shards in listed order,
    read by the training loader with evaluation preprocessing, embedded."""
    shard_list = list_shards(shards, filesystem_flags)
    config = LoaderConfig(
        shards=shards, batch_size=min(batch_size, samples), workers=0,  # one ordered stream
        image_size=model.image_size, shuffle_buffer=0, shard_shuffle=False, resampled=False,
        decode="cpu", augment=False, drop_last=False, filesystem_flags=tuple(filesystem_flags))
    loader = make_loader(config, tokenizer.encode, device=device, rank=0, world_size=1,
                         shards=shard_list)
    image_features, token_rows, collected = [], [], 0
    for images, tokens in loader:
        take = min(len(tokens), samples - collected)
        image_features.append(F.normalize(model.encode_image(images[:take]).float(), dim=-1).cpu())
        token_rows.append(tokens[:take].cpu())
        collected += take
        if collected >= samples:
            break
    if not collected:
        raise ConfigError(f"--retrieval-shards {shards!r} gave no readable pairs")
    tokens = torch.cat(token_rows)
    # Captions repeat: embed each distinct one once; copies then share bitwise-equal features.
    distinct_tokens, copy_of = torch.unique(tokens, dim=0, return_inverse=True)
    text_features = torch.cat([
        F.normalize(model.encode_text(chunk.to(device)).float(), dim=-1).cpu()
        for chunk in distinct_tokens.split(batch_size)])
    return {"image_features": torch.cat(image_features), "text_features": text_features[copy_of],
            "distinct_captions": len(distinct_tokens), "shard_count": len(shard_list.urls),
            "skipped": dict(loader.skipped)}


def run_retrieval(model: CLIP, tokenizer: Tokenizer, config: EvalConfig,
                  device: torch.device) -> dict:
    pairs = embed_shard_pairs(model, tokenizer, config.retrieval_shards, config.retrieval_samples,
                              config.batch_size, device, config.filesystem_flags)
    recalls = retrieval_recall(pairs["image_features"], pairs["text_features"])
    return {"shards": config.retrieval_shards, "shard_files": pairs["shard_count"],
            "pairs": len(pairs["image_features"]), "distinct_captions": pairs["distinct_captions"],
            **recalls, "skipped": pairs["skipped"]}


# --------------------------------------------------------------------------- linear probe


def _split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) sizes for one class of n images: each asked-for held-out part gets
    at least one image once there are enough to leave one for training (test first)."""
    _, val_fraction, test_fraction = fractions
    test = math.floor(n * test_fraction)
    if test_fraction > 0 and n >= 2:
        test = max(1, test)
    val = math.floor(n * val_fraction)
    if val_fraction > 0 and n - test >= 2:
        val = max(1, val)
    return n - val - test, val, test


def stratified_split(labels: np.ndarray, seed: int,
                     fractions: Sequence[float] = PROBE_SPLIT_FRACTIONS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of (train, val, test): each class shuffled with its own seeded generator, so
    one class's split does not depend on the others, then cut by `fractions`."""
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        np.random.default_rng([seed, int(label)]).shuffle(indices)
        train, val, _ = _split_counts(len(indices), fractions)
        for part, chosen in zip(parts, np.split(indices, [train, train + val])):
            part.extend(chosen.tolist())
    return tuple(np.array(sorted(part), dtype=np.int64) for part in parts)


class TooFewImages(ValueError):
    """The dataset cannot be split for a probe; evaluation reports it and goes on."""


@dataclasses.dataclass(frozen=True)
class Features:
    x: np.ndarray  # float64 [n, dim], unit rows
    y: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> "Features":
        return Features(self.x[indices], self.y[indices])

    @classmethod
    def of(cls, images: EmbeddedImages) -> "Features":
        x = F.normalize(images.features.double(), dim=-1).numpy()
        return cls(x, images.labels.numpy().astype(np.int64))

    @classmethod
    def joined(cls, *parts: "Features") -> "Features":
        return cls(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def fit_probe(train: Features, C: float):
    """(fitted LogisticRegression, whether L-BFGS converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(C=C, solver="lbfgs", max_iter=LINEAR_PROBE_MAX_ITER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(train.x, train.y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return classifier, converged


def probe_accuracy(classifier, test: Features) -> float:
    return float(np.mean(classifier.predict(test.x) == test.y))


def linear_probe(train: Features, val: Features, test: Features,
                 k_shots: Sequence[int] = (1, 2, 4, 8, 16), seed: int = 0,
                 c_grid: Sequence[float] = LINEAR_PROBE_C_GRID) -> dict:
    """Sweep C on validation, refit on train + validation, score test; then k-shot probes
    with the chosen C, each the mean test accuracy over K_SHOT_REPEATS seeded draws."""
    if len(np.unique(train.y)) < 2 or not len(val) or not len(test):
        raise TooFewImages(f"a linear probe needs two classes in train and non-empty val and "
                           f"test; the split has {len(train)} / {len(val)} / {len(test)} images")
    # One BLAS thread: L-BFGS on probe-sized problems makes thousands of small matrix
    # products, and idle BLAS threads spin between them; on a busy 2-core machine the
    # default threads made the probe many times slower. The limit reaches only libraries already
    # loaded, and scipy brings its own OpenBLAS: import scikit-learn (hence scipy) first.
    import importlib

    from threadpoolctl import threadpool_limits

    importlib.import_module("sklearn.linear_model")

    with threadpool_limits(limits=1, user_api="blas"):
        return _linear_probe(train, val, test, k_shots, seed, c_grid)


def _linear_probe(train: Features, val: Features, test: Features, k_shots: Sequence[int],
                  seed: int, c_grid: Sequence[float]) -> dict:
    not_converged = 0
    sweep = []
    for C in sorted(c_grid):
        classifier, converged = fit_probe(train, C)
        not_converged += not converged
        sweep.append({"C": float(C), "val_accuracy": probe_accuracy(classifier, val)})
    # The first best in ascending C: the strongest regularisation among equals.
    best = max(sweep, key=lambda point: point["val_accuracy"])
    classifier, converged = fit_probe(Features.joined(train, val), best["C"])
    not_converged += not converged

    per_class = {int(label): np.flatnonzero(train.y == label) for label in np.unique(train.y)}
    fewest = min(len(indices) for indices in per_class.values())
    k_shot, k_shot_skipped = {}, []
    for k in k_shots:
        if k > fewest:  # some class has fewer than k training images
            k_shot_skipped.append(k)
            continue
        accuracies = []
        for repeat in range(K_SHOT_REPEATS):
            rng = np.random.default_rng([seed, k, repeat])
            chosen = np.concatenate([rng.choice(indices, size=k, replace=False)
                                     for indices in per_class.values()])
            few_shot, converged = fit_probe(train.subset(chosen), best["C"])
            not_converged += not converged
            accuracies.append(probe_accuracy(few_shot, test))
        k_shot[str(k)] = float(np.mean(accuracies))
    return {"split": {"train": len(train), "val": len(val), "test": len(test)},
            "sweep": sweep, "best_C": best["C"], "val_accuracy": best["val_accuracy"],
            "test_accuracy": probe_accuracy(classifier, test),
            "k_shot": k_shot, "k_shot_skipped": k_shot_skipped, "k_shot_repeats": K_SHOT_REPEATS,
            "fits_not_converged": not_converged}


def run_linear_probe(dataset: ImageDataset, embedded: Mapping[str, EmbeddedImages],
                     config: EvalConfig) -> dict:
    if dataset.predefined_splits:
        train, test = Features.of(embedded["train"]), Features.of(embedded["test"])
        if "val" in embedded:
            val = Features.of(embedded["val"])
            how = "train/ val/ test/ folders"
        else:  # carve validation out of train/, in the same 50:25 proportion as the default
            train_part, val_part, _ = stratified_split(train.y, config.seed, (2 / 3, 1 / 3, 0.0))
            train, val = train.subset(train_part), train.subset(val_part)
            how = "train/ test/ folders; val: a seeded stratified third of train/"
    else:
        everything = Features.of(embedded["all"])
        parts = stratified_split(everything.y, config.seed)
        train, val, test = (everything.subset(part) for part in parts)
        how = "seeded stratified split per class, 50/25/25"
    results = linear_probe(train, val, test, config.k_shots, config.seed)
    skipped: collections.Counter = collections.Counter()
    for images in embedded.values():
        skipped.update(images.skipped)
    return {**results, "split_method": how, "chance": 1 / len(dataset.names),
            "skipped": dict(skipped)}


# ------------------------------------------------------------------------------ evaluate


def evaluate(config: EvalConfig) -> dict:
    """Run every evaluation the config asks for; return the results (and write them as JSON
    to `config.output` when set). Sections not asked for are absent."""
    started = time.perf_counter()
    # Check the user's inputs before spending time on the checkpoint.
    template_sets = load_templates(config.templates)
    dataset = read_image_dataset(config.dataset, config.class_names) if config.dataset else None
    apply_filesystem_flags(config.filesystem_flags)  # a remote checkpoint or shards
    device = choose_device(config.device)
    checkpoint_file = resolve_checkpoint(config.checkpoint)
    if not storage.exists(checkpoint_file):
        raise ConfigError(f"--checkpoint: no checkpoint at {checkpoint_file} (a .pt file, or "
                          "a run folder with checkpoints/latest.pt)")
    checkpoint = load_checkpoint(checkpoint_file)
    model, tokenizer = model_from_checkpoint(checkpoint, device)
    results: dict = {"checkpoint": checkpoint_file, "model": model.config.name,
                     "step": checkpoint.get("step"), "device": str(device)}
    del checkpoint  # the optimizer state is as large as the model again
    seconds = {}
    not_run = {}

    with torch.no_grad():
        if dataset is not None:
            section_start = time.perf_counter()
            embedded = {split: embed_image_files(model, files, config.batch_size, device)
                        for split, files in dataset.splits.items()}
            seconds["embed_images"] = time.perf_counter() - section_start
            zero_shot_images = embedded["test" if dataset.predefined_splits else "all"]
            if not len(zero_shot_images.labels):
                raise ConfigError(f"no readable images in {config.dataset} (skipped: "
                                  f"{zero_shot_images.skipped})")
            section_start = time.perf_counter()
            results["zero_shot"] = run_zero_shot(
                model, tokenizer, dataset, zero_shot_images, template_sets, device,
                config.templates if "file" in template_sets else None)
            seconds["zero_shot"] = time.perf_counter() - section_start
            if config.linear_probe:
                section_start = time.perf_counter()
                try:
                    results["linear_probe"] = run_linear_probe(dataset, embedded, config)
                except TooFewImages as error:  # the other sections still stand
                    not_run["linear_probe"] = str(error)
                    LOGGER.warning("eval: no linear probe: %s", error)
                seconds["linear_probe"] = time.perf_counter() - section_start
        if config.retrieval_shards:
            section_start = time.perf_counter()
            results["retrieval"] = run_retrieval(model, tokenizer, config, device)
            seconds["retrieval"] = time.perf_counter() - section_start

    if not_run:
        results["not_run"] = not_run
    seconds["total"] = time.perf_counter() - started
    results["seconds"] = {name: round(value, 2) for name, value in seconds.items()}
    results["config"] = without_secrets(config)
    if config.output:
        # Insertion order: readers should see k-shots as 1, 2, 4, 8, 16 and template sets in
        # the order they were asked for.
        storage.write_json_atomic(config.output, results, sort_keys=False)
        results["output"] = config.output
    return results


# ------------------------------------------------------------------------- the printed table


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_results(results: dict) -> str:
    """The results as a few human-readable tables."""
    lines = [f"checkpoint {results['checkpoint']} (model {results['model']}, "
             f"step {results['step']}, on {results['device']})"]
    zero_shot = results.get("zero_shot")
    if zero_shot:
        lines += ["", f"zero-shot on {zero_shot['dataset']} ({zero_shot['split']}): "
                      f"{zero_shot['images']} images, {len(zero_shot['classes'])} classes, "
                      f"chance {_percent(zero_shot['chance'])}",
                  f"  {'templates':<10} {'n':>4} {'top-1':>7} {'top-' + str(zero_shot['top5_k']):>7}"]
        for set_name, scores in zero_shot["by_templates"].items():
            lines.append(f"  {set_name:<10} {scores['templates']:>4} {_percent(scores['top1']):>7}"
                         f" {_percent(scores['top5']):>7}")
        set_names = list(zero_shot["by_templates"])
        width = max(len("per class"), *(len(name) for name in zero_shot["classes"])) + 1
        lines.append(f"  {'per class':<{width}}" + " ".join(f"{s:>9}" for s in set_names))
        for name in zero_shot["classes"]:
            lines.append(f"  {name:<{width}}" + " ".join(
                f"{_percent(zero_shot['by_templates'][s]['per_class'][name]):>9}"
                for s in set_names))
        if zero_shot["skipped"]:
            lines.append("  skipped files: " + ", ".join(
                f"{reason} {n}" for reason, n in sorted(zero_shot["skipped"].items())))
    retrieval = results.get("retrieval")
    if retrieval:
        ks = list(retrieval["image_to_text"])
        lines += ["", f"retrieval on {retrieval['shards']}: {retrieval['pairs']} pairs "
                      f"({retrieval['distinct_captions']} distinct captions)",
                  f"  {'':<14}" + " ".join(f"{k:>7}" for k in ks)]
        for direction, label in (("image_to_text", "image -> text"),
                                 ("text_to_image", "text -> image")):
            lines.append(f"  {label:<14}" + " ".join(
                f"{_percent(retrieval[direction][k]):>7}" for k in ks))
        if retrieval["skipped"]:
            lines.append("  skipped samples: " + ", ".join(
                f"{reason} {n}" for reason, n in sorted(retrieval["skipped"].items())))
    probe = results.get("linear_probe")
    if probe:
        split = probe["split"]
        lines += ["", f"linear probe: train {split['train']} / val {split['val']} / "
                      f"test {split['test']} ({probe['split_method']})",
                  f"  best C {probe['best_C']:g} (val {_percent(probe['val_accuracy'])}); "
                  f"test {_percent(probe['test_accuracy'])}, chance {_percent(probe['chance'])}"]
        if probe["k_shot"] or probe["k_shot_skipped"]:
            shots = [f"{k}: {_percent(accuracy)}" for k, accuracy in probe["k_shot"].items()]
            shots += [f"{k}: skipped (too few train images)" for k in probe["k_shot_skipped"]]
            lines.append(f"  k-shot per class (test, mean of {probe['k_shot_repeats']} draws): "
                         + ", ".join(shots))
    for section, why in results.get("not_run", {}).items():
        lines += ["", f"{section}: not run: {why}"]
    if "output" in results:
        lines += ["", f"results: {results['output']}"]
    return "\n".join(lines)
