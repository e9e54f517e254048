"""`openwit eval`: zero-shot scores, prompt ensembling, retrieval recall and the linear probe
checked against hand-computed answers, then the command end to end on a briefly trained model
(every section present, numbers in range, bad images skipped and counted)."""

import json
import math
import os
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from openwit.model.evaluate import (  # noqa: E402
    ENSEMBLE_TEMPLATES,
    LINEAR_PROBE_C_GRID,
    SINGLE_TEMPLATES,
    EvalConfig,
    Features,
    evaluate,
    fill_template,
    format_results,
    linear_probe,
    load_class_names,
    load_templates,
    retrieval_recall,
    stratified_split,
    zero_shot_classifier,
    zero_shot_scores,
)
from openwit.pipeline.core.errors import ConfigError  # noqa: E402
from test_train import toy_image, write_toy_shards  # noqa: E402

# ------------------------------------------------------------------------------ zero-shot


def test_zero_shot_scores_on_a_known_case():
    classifier = torch.eye(3)  # class c is the direction e_c
    image_features = torch.tensor([[1.0, 0.0, 0.0],   # class 0, predicted 0
                                   [0.1, 0.9, 0.0],   # class 0, predicted 1
                                   [0.0, 1.0, 0.2],   # class 1, predicted 1
                                   [0.0, 0.3, 1.0]])  # class 2, predicted 2
    labels = torch.tensor([0, 0, 1, 2])
    scores = zero_shot_scores(image_features, labels, classifier, ["cat", "dog", "owl"])
    assert scores["top1"] == 0.75
    assert scores["top5"] == 1.0  # top-min(5, 3): every class is in the top 3
    assert scores["per_class"] == {"cat": 0.5, "dog": 1.0, "owl": 1.0}
    assert scores["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_top5_counts_the_five_best_of_more_classes():
    classifier = torch.eye(7)
    # Scores fall with the class index, so the true class's rank is its label.
    descending = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1]])
    image_features = descending.repeat(3, 1)
    labels = torch.tensor([0, 4, 5])  # ranks 1, 5 and 6
    scores = zero_shot_scores(image_features, labels, classifier)
    assert scores["top1"] == pytest.approx(1 / 3)
    assert scores["top5"] == pytest.approx(2 / 3)
    assert scores["per_class"]["0"] == 1.0 and scores["per_class"]["4"] == 0.0
    assert scores["per_class"]["1"] is None  # no images of class 1
    assert sum(map(sum, scores["confusion"])) == 3
    assert [row[0] for row in scores["confusion"]] == [1, 0, 0, 0, 1, 1, 0]


class FakeTokenizer:
    """Each distinct text gets an id; `encode` gives one id per row."""

    def __init__(self):
        self.texts = []

    def encode(self, texts):
        ids = []
        for text in texts:
            if text not in self.texts:
                self.texts.append(text)
            ids.append(self.texts.index(text))
        return torch.tensor(ids)[:, None]


class FakeTextModel:
    """A fixed random vector per text, deliberately not unit length."""

    def __init__(self, tokenizer, dim=8):
        self.tokenizer, self.dim = tokenizer, dim

    def vector(self, text):
        generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        return torch.randn(self.dim, generator=generator) * (1 + len(text) % 3)

    def encode_text(self, tokens):
        return torch.stack([self.vector(self.tokenizer.texts[i]) for i in tokens[:, 0].tolist()])


def test_ensemble_classifier_is_the_renormalised_mean_of_unit_template_embeddings():
    tokenizer = FakeTokenizer()
    model = FakeTextModel(tokenizer)
    names = ["red square", "blue circle", "star"]
    classifier = zero_shot_classifier(model, tokenizer, names, ENSEMBLE_TEMPLATES, "cpu",
                                      batch_size=7)  # batches that straddle classes
    assert classifier.shape == (3, model.dim)
    for row, name in enumerate(names):
        vectors = np.stack([model.vector(template.replace("{}", name)).double().numpy()
                            for template in ENSEMBLE_TEMPLATES])
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        mean = unit.mean(axis=0)
        expected = mean / np.linalg.norm(mean)
        np.testing.assert_allclose(classifier[row].numpy(), expected, atol=1e-6)
    single = zero_shot_classifier(model, tokenizer, names, SINGLE_TEMPLATES, "cpu")
    for row, name in enumerate(names):
        vector = model.vector(f"a photo of a {name}.")
        np.testing.assert_allclose(single[row].numpy(), (vector / vector.norm()).numpy(),
                                   atol=1e-6)


def test_templates_and_class_names_files(tmp_path):
    assert set(load_templates("both")) == {"single", "ensemble"}
    assert load_templates("single") == {"single": SINGLE_TEMPLATES}
    assert 20 <= len(ENSEMBLE_TEMPLATES) <= 30 and all("{}" in t for t in ENSEMBLE_TEMPLATES)
    templates = tmp_path / "templates.txt"
    templates.write_text("# mine\nitap of a {}.\n\na {} with {braces}.\n")
    sets = load_templates(str(templates))
    assert sets["file"] == ("itap of a {}.", "a {} with {braces}.")
    assert set(sets) == {"single", "ensemble", "file"}
    assert fill_template("a {} with {braces}.", "cat") == "a cat with {braces}."
    templates.write_text("a photo of a cat.\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_templates(str(templates))
    with pytest.raises(ConfigError, match="none of those"):
        load_templates(str(tmp_path / "missing.txt"))

    folders = ["n001", "n002"]
    names = tmp_path / "names.txt"
    names.write_text("n002\tgolden retriever\nn001\ttabby cat\nn999\tunused\n")
    assert load_class_names(str(names), folders) == ["tabby cat", "golden retriever"]
    names.write_text("tabby cat\ngolden retriever\n")
    assert load_class_names(str(names), folders) == ["tabby cat", "golden retriever"]
    names.write_text("just one\n")
    with pytest.raises(ConfigError, match="1 names for 2"):
        load_class_names(str(names), folders)
    names.write_text("n001\tcat\n")
    with pytest.raises(ConfigError, match="n002"):
        load_class_names(str(names), folders)


# ------------------------------------------------------------------------------ retrieval


def test_retrieval_recall_on_a_hand_computed_case():
    texts = torch.eye(4)
    images = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                           [0.8, 0.6, 0.0, 0.0],
                           [0.48, 0.36, 0.0, 0.8],
                           [0.0, 0.0, 0.6, 0.8]])
    recall = retrieval_recall(images, texts, ks=(1, 2, 4))
    # image -> text: the own text ranks 1st, 2nd, 4th and 1st.
    assert recall["image_to_text"] == pytest.approx({"R@1": 0.5, "R@2": 0.75, "R@4": 1.0})
    # text -> image, by columns: text 0 and 1 find their image first; text 2 scores 0 with
    # its image, one image above and two tied (expected hit at 2: 1/3); text 3 ties with
    # image 2 for first place (1/2 at 1).
    assert recall["text_to_image"] == pytest.approx(
        {"R@1": (1 + 1 + 0 + 0.5) / 4, "R@2": (1 + 1 + 1 / 3 + 1) / 4, "R@4": 1.0})


def test_repeated_captions_share_the_hit_and_collapsed_features_score_chance():
    caption_a, caption_b = [1.0, 0.0], [0.0, 1.0]
    texts = torch.tensor([caption_a, caption_a, caption_b])  # pairs 0 and 1 share a caption
    images = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    recall = retrieval_recall(images, texts, ks=(1, 2))
    assert recall["image_to_text"]["R@1"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert recall["image_to_text"]["R@2"] == pytest.approx(1.0)

    same = torch.ones(10, 4) / 2
    collapsed = retrieval_recall(same, same, ks=(1, 5, 10))
    assert collapsed["image_to_text"] == pytest.approx({"R@1": 0.1, "R@5": 0.5, "R@10": 1.0})


# --------------------------------------------------------------------------- linear probe


def separable_features(classes=4, per_class=40, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    x = np.repeat(centres, per_class, axis=0) + 0.4 * rng.normal(size=(classes * per_class, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return Features(x, np.repeat(np.arange(classes), per_class))


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = np.array([0] * 8 + [1] * 8 + [2] * 3)
    train, val, test = stratified_split(labels, seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))
    assert [np.bincount(labels[part], minlength=3).tolist() for part in (train, val, test)] == \
        [[4, 4, 1], [2, 2, 1], [2, 2, 1]]
    again = stratified_split(labels, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    other = stratified_split(labels, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip((train, val, test), other))


def test_linear_probe_beats_chance_and_picks_c_on_validation():
    features = separable_features()
    train, val, test = (features.subset(part) for part in stratified_split(features.y, seed=0))
    results = linear_probe(train, val, test, k_shots=(1, 4, 50), seed=0)
    assert results["split"] == {"train": 80, "val": 40, "test": 40}
    assert [point["C"] for point in results["sweep"]] == list(LINEAR_PROBE_C_GRID)
    best = max(point["val_accuracy"] for point in results["sweep"])
    first_best = next(p["C"] for p in results["sweep"] if p["val_accuracy"] == best)
    assert results["best_C"] == first_best and results["val_accuracy"] == best
    assert results["test_accuracy"] > 0.9  # chance is 0.25
    assert results["k_shot"]["1"] > 0.5 and results["k_shot"]["4"] > 0.8
    assert results["k_shot_skipped"] == [50]  # 20 training images per class


# ------------------------------------------------------------------------ end to end


def test_folder_images_get_exactly_the_loaders_evaluation_preprocessing(tmp_path):
    import webdataset as wds

    from openwit.model.data import (CLIP_MEAN, CLIP_STD, LoaderConfig, decode_for_eval, make_loader,
                            normalise_uint8)

    images = [toy_image("red", "circle", 3), toy_image("blue", "square", 7)]
    os.makedirs(tmp_path / "shards")
    with wds.TarWriter(str(tmp_path / "shards" / "000000.tar")) as tar:
        for index, data in enumerate(images):
            tar.write({"__key__": f"{index:04d}", "jpg": data, "txt": b"a caption"})
    config = LoaderConfig(shards=str(tmp_path / "shards" / "000000.tar"), batch_size=2,
                          workers=0, image_size=32, shuffle_buffer=0, augment=False,
                          decode="cpu", drop_last=False)
    (from_loader, _), = list(make_loader(config, lambda texts: torch.zeros(len(texts), 4),
                                         device="cpu"))
    pixels = np.stack([decode_for_eval(data, 32) for data in images]).transpose(0, 3, 1, 2)
    from_folder = normalise_uint8(torch.from_numpy(np.ascontiguousarray(pixels)), CLIP_MEAN,
                                  CLIP_STD)
    assert torch.equal(from_loader, from_folder)



CLASSES = {"red_square": ("red", "square"), "blue_circle": ("blue", "circle"),
           "green_square": ("green", "square")}


def write_image_folder(root, per_class=8, offset=1000):
    for folder, (colour, shape) in CLASSES.items():
        os.makedirs(root / folder, exist_ok=True)
        for index in range(per_class):
            (root / folder / f"{index:03d}.jpg").write_bytes(toy_image(colour, shape,
                                                                       offset + index))
    return root


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # These models are tiny: a second OpenMP thread gains nothing, and when the cores are
    # busy with other work its spin-waiting made training here ~5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A `tiny` model after a few steps on the toy corpus: (run folder, shard folder)."""
    from openwit.model.options import TrainConfig
    from openwit.model.train import train

    shards = write_toy_shards(str(tmp_path_factory.mktemp("eval_shards")), samples=128,
                              per_shard=32)
    output = tmp_path_factory.mktemp("eval_run")
    train(TrainConfig(shards=shards, output=str(output), model="tiny", batch_size=32, epochs=1,
                      workers=0, warmup_steps=2, vocab_size=300, progress=False))
    return output, shards


def numbers_in(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers_in(item)
    elif isinstance(value, float):
        yield value


def test_openwit_eval_end_to_end(trained_run, tmp_path, capsys):
    from openwit.pipeline.apps.cli import main

    run, shards = trained_run
    dataset = write_image_folder(tmp_path / "eval")
    assert main(["eval", "--checkpoint", str(run), "--dataset", str(dataset),
                 "--retrieval-shards", shards, "--retrieval-samples", "50",
                 "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((run / "eval.json").read_text())  # default: beside checkpoints/

    assert results["model"] == "tiny" and results["step"] == 4
    assert results["checkpoint"].endswith(os.path.join("checkpoints", "latest.pt"))
    zero_shot = results["zero_shot"]
    assert zero_shot["classes"] == ["blue circle", "green square", "red square"]  # sorted
    assert zero_shot["images"] == 24 and zero_shot["chance"] == pytest.approx(1 / 3)
    assert set(zero_shot["by_templates"]) == {"single", "ensemble"}
    for name, scores in zero_shot["by_templates"].items():
        assert scores["templates"] == len(SINGLE_TEMPLATES if name == "single"
                                          else ENSEMBLE_TEMPLATES)
        assert set(scores["per_class"]) == set(zero_shot["classes"])
        assert sum(map(sum, scores["confusion"])) == 24
        assert scores["top5"] == 1.0  # three classes: the top 3 holds every one
    retrieval = results["retrieval"]
    assert retrieval["pairs"] == 50 and retrieval["distinct_captions"] <= 50
    assert set(retrieval["image_to_text"]) == set(retrieval["text_to_image"]) == \
        {"R@1", "R@5", "R@10"}
    probe = results["linear_probe"]
    assert probe["split"] == {"train": 12, "val": 6, "test": 6}
    assert probe["best_C"] in LINEAR_PROBE_C_GRID and len(probe["sweep"]) == len(LINEAR_PROBE_C_GRID)
    assert set(probe["k_shot"]) == {"1", "2", "4"} and probe["k_shot_skipped"] == [8, 16]
    checked = [value for section in ("zero_shot", "retrieval", "linear_probe")
               for value in numbers_in({k: v for k, v in results[section].items()
                                        if k not in ("sweep", "best_C")})
               if not math.isnan(value)]
    checked += [point["val_accuracy"] for point in probe["sweep"]]
    assert checked and all(0.0 <= value <= 1.0 for value in checked)
    assert "chance 33.3%" in printed and "R@10" in printed and "k-shot" in printed
    assert "ensemble" in printed and "red square" in printed


def test_bad_files_in_the_folder_are_skipped_and_counted(trained_run, tmp_path):
    run, _ = trained_run
    dataset = write_image_folder(tmp_path / "eval", per_class=3)
    good = (dataset / "red_square" / "000.jpg").read_bytes()
    (dataset / "red_square" / "text.jpg").write_bytes(b"not an image at all")
    (dataset / "red_square" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (dataset / "blue_circle" / "empty.png").write_bytes(b"")
    (dataset / "blue_circle" / "notes.txt").write_text("photographer: me")
    (dataset / "blue_circle" / ".DS_Store").write_bytes(b"\0")  # hidden: not a sample

    results = evaluate(EvalConfig(checkpoint=str(run), dataset=str(dataset), templates="single",
                                  linear_probe=False))
    zero_shot = results["zero_shot"]
    assert zero_shot["images"] == 9
    assert zero_shot["skipped"] == {"bad_image": 3, "not_an_image_file": 1}
    assert {os.path.basename(f["path"]) for f in zero_shot["skipped_files"]} == \
        {"text.jpg", "truncated.jpg", "empty.png", "notes.txt"}
    assert set(zero_shot["by_templates"]) == {"single"}
    assert "linear_probe" not in results and "retrieval" not in results
    assert "bad_image 3" in format_results(results)


def test_train_and_test_folders_and_a_names_file(trained_run, tmp_path):
    run, _ = trained_run
    write_image_folder(tmp_path / "eval" / "train", per_class=6)
    write_image_folder(tmp_path / "eval" / "test", per_class=2, offset=2000)
    names = tmp_path / "names.txt"
    names.write_text("blue_circle\tblue circle\ngreen_square\tgreen box\nred_square\tred box\n")
    output = tmp_path / "results" / "eval.json"

    results = evaluate(EvalConfig(checkpoint=str(run / "checkpoints" / "latest.pt"),
                                  dataset=str(tmp_path / "eval"), class_names=str(names),
                                  templates="single", k_shots=(1, 2, 4), output=str(output)))
    assert json.loads(output.read_text())["zero_shot"] == results["zero_shot"]
    assert results["zero_shot"]["split"] == "test" and results["zero_shot"]["images"] == 6
    assert results["zero_shot"]["classes"] == ["blue circle", "green box", "red box"]
    probe = results["linear_probe"]
    assert probe["split"] == {"train": 12, "val": 6, "test": 6}  # val: a third of train/
    assert probe["k_shot_skipped"] == [] and set(probe["k_shot"]) == {"1", "2", "4"}


def test_too_few_images_for_a_probe_still_gives_zero_shot(trained_run, tmp_path):
    run, _ = trained_run
    dataset = write_image_folder(tmp_path / "eval", per_class=1)
    results = evaluate(EvalConfig(checkpoint=str(run), dataset=str(dataset), templates="single"))
    assert results["zero_shot"]["images"] == 3
    assert "linear_probe" not in results and "linear probe" in results["not_run"]["linear_probe"]
    assert "not run" in format_results(results)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "x.pt"], "nothing to evaluate"),
    (["eval", "--checkpoint", "x.pt", "--dataset", "{tmp}", "--datset", "y"],
     "unknown option(s): --datset"),
    (["eval", "--checkpoint", "x.pt", "--dataset", "{tmp}/missing"], "is not a folder"),
    (["eval", "--checkpoint", "{tmp}/none.pt", "--retrieval-shards", "{tmp}"],
     "no checkpoint at"),
])
def test_eval_user_errors_exit_with_a_message(tmp_path, capsys, argv, message):
    from openwit.pipeline.apps.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
