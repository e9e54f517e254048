"""`openwit report`: one self-contained HTML page from a corpus, a run, an evaluation, an ablation.

The inputs are written here with the real schemas (the shard and failure schemas are imported
from the pipeline), so no build runs and the whole file takes seconds.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from openwit.pipeline.apps import report
from openwit.pipeline.apps.cli import main
from openwit.pipeline.apps.report import ReportConfig, render_report, write_report
from openwit.pipeline.core.layout import (
    CORPUS_QUERY_COUNTS_SCHEMA as QUERY_COUNTS_SCHEMA,
    CURATED_QUERY_COUNTS_SCHEMA,
    FAILURE_SCHEMA,
    SAMPLE_SCHEMA,
)

IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
THUMBNAIL = re.compile(r'<figure class="thumb">(?:<img src="data:image/jpeg;base64,'
                       r'([A-Za-z0-9+/=]+)"[^>]*>|<p class="na">(.*?)</p>)'
                       r"<figcaption><code>(.*?)</code>(.*?)</figcaption></figure>")
CLASSES = ["circle", "square", "triangle"]
STAGES = [
    {"stage": "read", "in": 12345, "kept": 12300, "dropped": {"missing_url": 45}},
    {"stage": "normalise", "in": 12300, "kept": 12300, "dropped": {}},
    {"stage": "match", "in": 12300, "kept": 12200, "dropped": {"no_query_match": 100}},
    {"stage": "dedup_url", "in": 12200, "kept": 12150, "dropped": {"duplicate_url": 50}},
    {"stage": "balance", "in": 12150, "kept": 12100, "dropped": {"balanced_out": 50}},
    {"stage": "language", "in": 12100, "kept": 12000,
     "dropped": {"language_not_wanted": 90, "language_uncertain": 10}},
]
FETCH_STAGES = [
    {"stage": "download", "in": 12000, "kept": 11000, "dropped": {"http_404": 1000}},
    {"stage": "dedup_image", "in": 11000, "kept": 10900, "dropped": {"duplicate_image": 100}},
    {"stage": "cap", "in": 10900, "kept": 6789, "dropped": {"over_query_cap": 4111}},
]


def _reasons(stages):
    return {reason: n for stage in stages for reason, n in stage["dropped"].items()}


def _write_parquet(path, rows, schema):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _sample(i: int, queries=("circle", "red")) -> dict:
    return {"key": f"{i:016x}", "url": f"http://a.test/{i}.jpg", "caption": f"a red circle {i}",
            "queries": list(queries), "language": "en", "language_prob": 1.0,
            "width": 64 + i % 3, "height": 64, "original_width": 200 + 10 * i,
            "original_height": 150 + 5 * i, "original_bytes": 10_000 + 1000 * i,
            "sha256": f"{i:064x}", "phash": f"{i:016x}",
            "phash_crops": [f"{i + 1:016x}"]}


def _failure(i: int, stage: str, reason: str, detail: str = "") -> dict:
    return {"key": f"f{i:015x}", "url": f"http://a.test/f{i}.jpg", "caption": "x",
            "stage": stage, "reason": reason, "detail": detail}


def _colour(i: int) -> tuple[int, int, int]:
    """A colour of its own for sample i, so a thumbnail shows whose image it is."""
    return (37 * i % 256, 90 + 53 * i % 160, 255 - 29 * i % 256)


def _jpeg(colour, size=(200, 150)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_shard(folder, index: int, samples: list[dict]) -> None:
    """shards/NNNNNN.parquet and shards/NNNNNN.tar (KEY.jpg, KEY.json, KEY.txt per sample)."""
    _write_parquet(folder / "shards" / f"{index:06d}.parquet", samples, SAMPLE_SCHEMA)
    members = {}
    for sample in samples:
        members[f"{sample['key']}.jpg"] = _jpeg(_colour(int(sample["key"], 16)))
        members[f"{sample['key']}.json"] = json.dumps(sample).encode()
        members[f"{sample['key']}.txt"] = sample["caption"].encode()
    (folder / "shards" / f"{index:06d}.tar").write_bytes(_tar(members))


def write_built_corpus(folder) -> None:
    """A build output: stats.json, query_counts.parquet, a shard's parquet, failure records."""
    stats = {
        "input_rows": 12345, "written": 6789, "dropped": 12345 - 6789, "wall_seconds": 42.5,
        "stages": STAGES + FETCH_STAGES, "failures_by_reason": _reasons(STAGES + FETCH_STAGES),
        "languages": {"en": 6789},
        "balance": {"per_query_cap": 1000, "oversample": 1.5, "target": 1500.0, "seed": 0},
        "shards": {"planned": 1, "with_samples": 1, "reused": 0, "tar_bytes": 5_000_000},
        "queries": {"matched": 3, "kept": 3, "written": 3, "above_cap": 0},
        "accounting_problems": [],
    }
    (folder / "stats.json").write_text(json.dumps(stats))
    _write_parquet(folder / "query_counts.parquet", [
        {"query_id": 0, "query": "red", "matched": 5000, "kept": 1600, "written": 1000},
        {"query_id": 1, "query": "circle", "matched": 800, "kept": 790, "written": 700},
        {"query_id": 2, "query": "hexagon", "matched": 20, "kept": 20, "written": 0},
    ], QUERY_COUNTS_SCHEMA)
    write_shard(folder, 0, [_sample(i) for i in range(40)])
    _write_parquet(folder / "failures" / "text-language-0.parquet",
                   [_failure(i, "language", "language_not_wanted", "fr p=0.99")
                    for i in range(3)] + [_failure(9, "language", "language_uncertain",
                                                   "de p=0.41")], FAILURE_SCHEMA)
    _write_parquet(folder / "failures" / "shard-000000.parquet",
                   [_failure(20 + i, "download", "http_404", "HTTP 404") for i in range(5)],
                   FAILURE_SCHEMA)


def write_curate_only(folder) -> None:
    """`openwit curate`'s output: curated.parquet/ part files, no shards, no `written`."""
    stats = {"input_rows": 12345, "curated": 12000, "stages": STAGES,
             "failures_by_reason": _reasons(STAGES), "languages": {"en": 12000},
             "queries": {"matched": 2, "kept": 2, "above_cap_before_download": 0},
             "balance": {"per_query_cap": 1000, "oversample": 1.5, "target": 1500.0},
             "accounting_problems": [], "wall_seconds": 3.2}
    (folder / "stats.json").write_text(json.dumps(stats))
    schema = CURATED_QUERY_COUNTS_SCHEMA
    _write_parquet(folder / "query_counts.parquet", [
        {"query_id": 0, "query": "red", "matched": 5000, "kept": 1600},
        {"query_id": 1, "query": "circle", "matched": 800, "kept": 790},
    ], schema)
    _write_parquet(folder / "curated.parquet" / "part-00000-of-00001.parquet",
                   [{"key": "a", "url": "http://a.test/a.jpg", "caption": "red circle",
                     "language": "en", "language_prob": 1.0}],
                   pa.schema([("key", pa.string()), ("url", pa.string()),
                              ("caption", pa.string()), ("language", pa.string()),
                              ("language_prob", pa.float64())]))


def write_run(folder) -> None:
    """metrics.jsonl as model/train.py's MetricsLog writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"step": step, "epoch": step // 4, "loss": 4.0 - 0.2 * step,
                "lr": 1e-4 * step, "logit_scale": 14.28 - 0.01 * step,
                "samples_per_s": 100.0 + step, "data_fraction": 0.05, "skipped": {}}
               for step in range(2, 12, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def evaluation() -> dict:
    per_class = {"circle": 0.9, "square": 0.5, "triangle": 0.25}
    return {
        "checkpoint": "run/checkpoints/latest.pt", "model": "tiny", "step": 10,
        "zero_shot": {
            "dataset": "web/eval", "classes": CLASSES, "images": 30, "chance": 1 / 3,
            "by_templates": {
                # model/evaluate.py writes None for a class without images
                "single": {"templates": 1, "top1": 0.51, "top5": 1.0,
                           "per_class": {**per_class, "triangle": None},
                           "confusion": [[9, 1, 0], [3, 5, 2], [4, 3, 3]]},
                "ensemble": {"templates": 24, "top1": 0.55, "top5": 1.0,
                             "per_class": per_class, "confusion": [[9, 1, 0], [2, 6, 2],
                                                                   [3, 4, 3]]}}},
        "retrieval": {"shards": "out/shards", "pairs": 1000,
                      "image_to_text": {"R@1": 0.11, "R@5": 0.31, "R@10": 0.41},
                      "text_to_image": {"R@1": 0.12, "R@5": 0.32, "R@10": 0.42}},
        "linear_probe": {"split": {"train": 15, "val": 9, "test": 6},
                         "sweep": [{"C": 0.01, "val_accuracy": 0.3},
                                   {"C": 1.0, "val_accuracy": 0.6}],
                         "best_C": 1.0, "test_accuracy": 0.66, "k_shot": {"1": 0.4, "2": 0.5},
                         "k_shot_skipped": [4]},
    }


ABLATION = {"arms": {"balanced": {"top1": 0.5, "head_top1": 0.55, "tail_top1": 0.45,
                                  "samples": 900},
                     "unbalanced": {"top1": 0.45, "head_top1": 0.7, "tail_top1": 0.2,
                                    "samples": 900}},
            "head_classes": ["circle"], "tail_classes": ["triangle"]}

# Plots of a full report: stages, per-query, failures, languages, image sizes | loss,
# throughput, lr + temperature | per-class, confusion, probe sweep, k-shot | ablation.
CORPUS_PLOTS = 5
RUN_PLOTS = 3
EVAL_PLOTS = 4
ABLATION_PLOTS = 1


def embedded_images(page: str) -> list[Image.Image]:
    images = []
    for encoded in IMAGE.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        image.load()  # decodes the whole PNG, not just its header
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        images.append(image)
    return images


@pytest.fixture
def full_inputs(tmp_path):
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    corpus.mkdir()
    write_built_corpus(corpus)
    write_run(run)
    (run / "eval.json").write_text(json.dumps(evaluation()))
    ablation = tmp_path / "ablation.json"
    ablation.write_text(json.dumps(ABLATION))
    return corpus, run, ablation


def test_full_report_embeds_every_plot_and_the_numbers(full_inputs):
    corpus, run, ablation = full_inputs
    path = write_report(ReportConfig(corpus=str(corpus), run=str(run),
                                     ablation_json=str(ablation)))
    assert path == str(corpus / "report.html")
    page = (corpus / "report.html").read_text()

    images = embedded_images(page)
    assert len(images) == CORPUS_PLOTS + RUN_PLOTS + EVAL_PLOTS + ABLATION_PLOTS
    # Every image is an embedded PNG plot or a JPEG thumbnail: the gallery's 12 here.
    assert len(thumbnails(section_of(page, "gallery"))) == 12
    assert page.count("<img ") == len(images) + len(thumbnails(page))
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r'<(link|script)\b|src="(?!data:)|url\(', page)
    # metrics.jsonl has no sample counts and this run has no run.json to read its batch from.
    assert page.count("not available") == 1 and "Loss vs samples seen: not available" in page
    assert "unexpected input format" not in page
    for number in ("12,345", "6,789", "5,556", "42.5"):  # input, written, dropped, wall s
        assert number in page
    for reason in ("over_query_cap", "duplicate_url", "duplicate_image", "language_uncertain"):
        assert reason in page
    for name in CLASSES + ["ensemble (best)", "R@10", "k-shot sizes skipped: 4", "unbalanced"]:
        assert name in page
    assert "Every dropped candidate has a record" not in page  # records cover only a few here
    assert ">fr<" in page and ">de<" in page  # languages rejected, from the failure records


def test_the_page_is_deterministic(full_inputs):
    corpus, run, ablation = full_inputs
    config = ReportConfig(corpus=str(corpus), run=str(run), ablation_json=str(ablation))
    assert render_report(config) == render_report(config)


def test_text_is_escaped(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_built_corpus(corpus)
    hostile = evaluation()
    hostile["zero_shot"]["classes"] = ["<script>x</script>", "square", "triangle"]
    (tmp_path / "eval.json").write_text(json.dumps(hostile))
    page = render_report(ReportConfig(corpus=str(corpus), eval_json=str(tmp_path / "eval.json")))
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_missing_inputs_say_not_available(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    output = tmp_path / "elsewhere" / "page.html"
    output.parent.mkdir()
    path = write_report(ReportConfig(corpus=str(empty), run=str(tmp_path / "no-run"),
                                     eval_json=str(tmp_path / "no-eval.json"),
                                     ablation_json=str(tmp_path / "no-ablation.json"),
                                     output=str(output)))
    page = output.read_text()
    assert path == str(output)
    assert embedded_images(page) == []
    for what in ("Headline numbers", "Stage counts", "Per-query counts", "Failures",
                 "Language mix", "Image sizes", "Duplicates", "Sample gallery", "Training metrics",
                 "Evaluation", "Ablation"):
        assert f"{what}: not available" in page


def test_partial_evaluation_and_odd_fields_cost_one_section(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_built_corpus(corpus)
    partial = {"model": "tiny", "retrieval": evaluation()["retrieval"],
               "linear_probe": {"sweep": "not a list", "best_C": 1.0}}
    (tmp_path / "eval.json").write_text(json.dumps(partial))
    page = render_report(ReportConfig(corpus=str(corpus), eval_json=str(tmp_path / "eval.json")))
    assert "Zero-shot: not available" in page
    assert "R@5" in page  # retrieval still rendered
    assert "Linear probe: not available (unexpected input format" in page
    assert len(embedded_images(page)) == CORPUS_PLOTS


def test_curate_only_folder_renders(tmp_path):
    write_curate_only(tmp_path)
    write_report(ReportConfig(corpus=str(tmp_path)))
    page = (tmp_path / "report.html").read_text()
    assert "curate-only" in page and "12,000" in page
    assert "Image sizes: not available" in page
    assert "unexpected input format" not in page
    # stages, per-query (matched and kept, no written), failures, languages
    assert len(embedded_images(page)) == 4
    assert "<th>written</th>" not in page.split('id="queries"')[1].split("</section>")[0]


def test_curate_only_languages_come_from_the_curated_parts(tmp_path):
    write_curate_only(tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    del stats["languages"]
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    page = render_report(ReportConfig(corpus=str(tmp_path)))
    languages = page.split('id="languages"')[1].split("</section>")[0]
    assert "<td>en</td>" in languages and "Language mix: not available" not in languages


def test_cli_report(full_inputs, capsys):
    corpus, run, ablation = full_inputs
    output = corpus.parent / "out.html"
    assert main(["report", str(corpus), "--run", str(run), "--eval", str(run / "eval.json"),
                 "--ablation", str(ablation), "--output", str(output)]) == 0
    assert f"report written to {output}" in capsys.readouterr().out
    assert len(embedded_images(output.read_text())) == (
        CORPUS_PLOTS + RUN_PLOTS + EVAL_PLOTS + ABLATION_PLOTS)


def test_cli_report_rejects_a_misspelt_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path), "--s3_endpoint_ulr", "http://x"])
    assert exit_info.value.code == 2
    assert "unknown option(s): --s3_endpoint_ulr" in capsys.readouterr().err


def test_cli_report_on_s3(s3, full_inputs):
    """The corpus, the run and the page itself on s3:// (a local moto server)."""
    client, endpoint = s3
    corpus, run, ablation = full_inputs
    for folder, prefix in ((corpus, "out"), (run, "run")):
        for path in folder.rglob("*"):
            if path.is_file():
                client.put_object(Bucket="corpus", Body=path.read_bytes(),
                                  Key=f"{prefix}/{path.relative_to(folder).as_posix()}")
    assert main(["report", "s3://corpus/out", "--run", "s3://corpus/run",
                 "--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
                 "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1"]) == 0
    page = client.get_object(Bucket="corpus", Key="out/report.html")["Body"].read().decode()
    # The run's eval.json is found on S3 too; no ablation was asked for.
    assert len(embedded_images(page)) == CORPUS_PLOTS + RUN_PLOTS + EVAL_PLOTS
    assert "12,345" in page and "triangle" in page


# ------------------------------------------------------------- dedup examples and gallery

KEPT_ACROSS, KEPT_HERE = f"{45:016x}", f"{7:016x}"  # kept keys in shard 1 and shard 0
HOSTILE_CAPTION = "<script>alert(1)</script> a near copy"
HOSTILE_URL = 'http://a.test/"><script>x</script>.jpg'
EVAL_SOURCE = "eval/<b>cat</b>.png"
# key -> (reason, detail, colour of its image)
REMOVED = {
    "f0000000000000a1": ("near_duplicate", f"Hamming distance 3 from {KEPT_ACROSS}, which is kept",
                         (250, 10, 10)),
    "f0000000000000a2": ("near_duplicate", f"Hamming distance 5 from {KEPT_ACROSS}, which is kept",
                         (10, 250, 10)),
    "f0000000000000b1": ("near_duplicate", f"Hamming distance 6 from {KEPT_HERE}, which is kept",
                         (10, 10, 250)),
    "f0000000000000e1": ("eval_duplicate",
                         f"Hamming distance 2 from evaluation image {EVAL_SOURCE}", (250, 250, 10)),
}
DEDUP_STAGE = {"stage": "dedup_image", "in": 11000, "kept": 10870,
               "dropped": {"duplicate_image": 100, "near_duplicate": 17, "eval_duplicate": 13}}


def removed_tar() -> bytes:
    """removed/000000.tar as the shard writer lays it out: KEY.jpg, KEY.json."""
    members = {}
    for key, (reason, detail, colour) in REMOVED.items():
        record = {"key": key, "url": HOSTILE_URL if key.endswith("a1") else f"http://a.test/{key}",
                  "caption": HOSTILE_CAPTION if key.endswith("a1") else f"removed {key}",
                  "stage": "dedup_image", "reason": reason, "detail": detail}
        members[f"{key}.jpg"] = _jpeg(colour)
        members[f"{key}.json"] = json.dumps(record).encode()
    return _tar(members)


def write_dedup_corpus(folder) -> None:
    """A built corpus with near and evaluation duplicates: two shards, stats.json with
    duplicates_removed and the evaluation set, and shard 0's removed-example file."""
    write_built_corpus(folder)
    write_shard(folder, 1, [_sample(i, ("square",)) for i in range(40, 60)])
    stats = json.loads((folder / "stats.json").read_text())
    stats["stages"] = [DEDUP_STAGE if s["stage"] == "dedup_image" else s for s in stats["stages"]]
    stats["failures_by_reason"] = _reasons(stats["stages"])
    stats["duplicates_removed"] = {"url": 50, "identical_image": 100, "near_duplicate": 17,
                                   "eval_duplicate": 13}
    stats["config"] = {"dedup": {"near_distance": 8, "near_crops": True, "colour_step": 4},
                       "excluded_images": {"hashed": 250, "unreadable": 2, "unreadable_examples": [
                           ["eval/broken.png", "cannot identify image file"],
                           ["eval/<i>empty</i>.jpg", "empty file"]]}}
    (folder / "stats.json").write_text(json.dumps(stats))
    (folder / "removed").mkdir()
    (folder / "removed" / "000000.tar").write_bytes(removed_tar())


def section_of(page: str, anchor: str) -> str:
    return page.split(f'<section id="{anchor}">')[1].split("</section>")[0]


def thumbnails(html_text: str) -> dict[str, tuple[Image.Image | None, str]]:
    """key -> (its decoded thumbnail, or None where the page says it is not available; the
    text beneath it)."""
    found = {}
    for encoded, missing, key, text in THUMBNAIL.findall(html_text):
        image = None
        if encoded:
            image = Image.open(io.BytesIO(base64.b64decode(encoded)))
            image.load()
            assert image.format == "JPEG" and max(image.size) <= 128
        found[key] = (image, missing + text)
    return found


def _looks_like(image: Image.Image, colour) -> bool:
    centre = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    return all(abs(a - b) <= 12 for a, b in zip(centre, colour))


@pytest.fixture
def dedup_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_dedup_corpus(corpus)
    return corpus


def test_dedup_section_shows_counts_kept_and_removed_images_and_distances(dedup_corpus):
    section = section_of(render_report(ReportConfig(corpus=str(dedup_corpus))), "duplicates")
    for meaning, reason, n in (("repeated URL", "duplicate_url", 50),
                               ("identical image bytes", "duplicate_image", 100),
                               ("near-duplicate image", "near_duplicate", 17),
                               ("copy of an evaluation image", "eval_duplicate", 13)):
        assert f"<td>{meaning}</td>" in section
        assert re.search(rf"<td>{reason}</td><td class=\"num\">{n}</td>", section)
    assert "Counts from stats.json&#x27;s duplicates_removed" in section
    assert "250 images hashed, 2 unreadable; 13 copies" in section
    assert "eval/broken.png (cannot identify image file)" in section
    assert "at most 8 bits apart" in section and "any of its centre crops" in section
    assert "within one level of 4" in section
    assert "not available" not in section

    shown = thumbnails(section)
    assert set(shown) == {KEPT_ACROSS, KEPT_HERE, *REMOVED}
    # The kept images are the shards' own (one from another shard than the removed file's).
    for kept in (KEPT_ACROSS, KEPT_HERE):
        image, text = shown[kept]
        assert _looks_like(image, _colour(int(kept, 16))) and "kept" in text
    for key, (reason, detail, colour) in REMOVED.items():
        assert _looks_like(shown[key][0], colour)
    assert "removed: Hamming distance 3" in shown["f0000000000000a1"][1]
    assert "removed: Hamming distance 6" in shown["f0000000000000b1"][1]
    assert ("removed: Hamming distance 2 from evaluation image "
            "eval/&lt;b&gt;cat&lt;/b&gt;.png") in shown["f0000000000000e1"][1]
    # Groups are ordered by kept key, each kept image first, then what it removed by key.
    order = [key for key in re.findall(r"<code>(.*?)</code>", section)]
    assert order == [KEPT_HERE, "f0000000000000b1", KEPT_ACROSS, "f0000000000000a1",
                     "f0000000000000a2", "f0000000000000e1"]


def test_dedup_examples_escape_captions_urls_and_sources(dedup_corpus):
    page = render_report(ReportConfig(corpus=str(dedup_corpus)))
    assert "<script>" not in page and "<b>cat" not in page and "<i>empty" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a near copy" in page
    assert 'title="http://a.test/&quot;&gt;&lt;script&gt;x&lt;/script&gt;.jpg"' in page
    assert "eval/&lt;i&gt;empty&lt;/i&gt;.jpg (empty file)" in page


def test_dedup_without_a_removed_file_says_so(dedup_corpus):
    (dedup_corpus / "removed" / "000000.tar").unlink()
    page = render_report(ReportConfig(corpus=str(dedup_corpus)))
    section = section_of(page, "duplicates")
    assert "Duplicate examples: not available (no removed-example files" in section
    assert re.search(r"<td>near_duplicate</td><td class=\"num\">17</td>", section)
    assert thumbnails(section) == {}
    assert len(thumbnails(section_of(page, "gallery"))) == 12  # the rest of the page renders


@pytest.mark.parametrize("damage", ["garbage", "empty", "cut"])
def test_dedup_with_a_broken_removed_file_says_so(dedup_corpus, damage):
    path = dedup_corpus / "removed" / "000000.tar"
    data = {"garbage": b"this is not a tar file " * 40, "empty": b"",
            "cut": removed_tar()[:700]}[damage]  # inside the first image
    path.write_bytes(data)
    page = render_report(ReportConfig(corpus=str(dedup_corpus)))
    section = section_of(page, "duplicates")
    assert f"Duplicate examples: not available (could not read {path}" in section
    assert thumbnails(section) == {}
    assert "unexpected input format" not in page
    assert len(thumbnails(section_of(page, "gallery"))) == 12


def test_dedup_shows_what_it_can_when_images_are_broken_missing_or_too_large(
        dedup_corpus, monkeypatch):
    members = {}
    with tarfile.open(fileobj=io.BytesIO(removed_tar())) as tar:
        for member in tar.getmembers():
            members[member.name] = tar.extractfile(member).read()
    members["f0000000000000a2.jpg"] = b"\xff\xd8 not really a jpeg"
    members["f0000000000000e1.jpg"] = _jpeg((1, 2, 3), size=(1200, 1200))  # the largest
    members["f0000000000000b1.json"] = b"{not json"
    (dedup_corpus / "removed" / "000000.tar").write_bytes(_tar(members))
    (dedup_corpus / "shards" / "000001.tar").unlink()  # where KEPT_ACROSS is
    monkeypatch.setattr(report, "MAX_TAR_MEMBER_BYTES", len(members["f0000000000000e1.jpg"]) - 1)

    section = section_of(render_report(ReportConfig(corpus=str(dedup_corpus))), "duplicates")
    shown = thumbnails(section)
    assert _looks_like(shown["f0000000000000a1"][0], REMOVED["f0000000000000a1"][2])
    assert shown["f0000000000000a2"][0] is None and "not a readable image" in shown[
        "f0000000000000a2"][1]
    assert shown[KEPT_ACROSS][0] is None and "000001.tar does not exist" in shown[KEPT_ACROSS][1]
    assert shown["f0000000000000e1"][0] is None
    assert "f0000000000000e1.jpg in" in section and "over the" in section  # skipped: too large
    assert "f0000000000000b1.json in" in section and "is not a failure record" in section
    assert KEPT_HERE not in shown  # its only removed image's record was unreadable


def test_old_stats_without_duplicates_removed_fall_back_to_stage_drops(dedup_corpus):
    stats = json.loads((dedup_corpus / "stats.json").read_text())
    del stats["duplicates_removed"], stats["config"]
    (dedup_corpus / "stats.json").write_text(json.dumps(stats))
    section = section_of(render_report(ReportConfig(corpus=str(dedup_corpus))), "duplicates")
    assert "predates duplicates_removed: the counts come from the dedup stages" in section
    for reason, n in (("duplicate_url", 50), ("duplicate_image", 100), ("near_duplicate", 17),
                      ("eval_duplicate", 13)):
        assert re.search(rf"<td>{reason}</td><td class=\"num\">{n}</td>", section)
    assert "No evaluation set was excluded" in section
    assert len(thumbnails(section)) == 6  # the examples do not depend on stats.json


def test_gallery_is_seeded_and_shows_captions_and_queries(dedup_corpus):
    config = ReportConfig(corpus=str(dedup_corpus))
    first, second = (section_of(render_report(config), "gallery") for _ in range(2))
    assert first == second
    shown = thumbnails(first)
    assert len(shown) == 12
    for key, (image, text) in shown.items():
        i = int(key, 16)
        assert _looks_like(image, _colour(i))  # each sample's own image from its shard's tar
        assert f"a red circle {i}" in text
        assert text.endswith("queries: circle, red" if i < 40 else "queries: square")
    assert sorted(shown) != [f"{i:016x}" for i in range(12)]  # drawn, not the first rows
    assert "seed 0 from shard(s) 000000, 000001" in first
    assert "not available" not in first


def test_gallery_says_which_images_it_could_not_read(dedup_corpus):
    (dedup_corpus / "shards" / "000001.tar").write_bytes(b"broken")
    section = section_of(render_report(ReportConfig(corpus=str(dedup_corpus))), "gallery")
    shown = thumbnails(section)
    assert len(shown) == 12
    from_shard_1 = [key for key in shown if int(key, 16) >= 40]
    assert from_shard_1 and len(from_shard_1) < 12
    for key, (image, text) in shown.items():
        if key in from_shard_1:
            assert image is None and "Image: not available (could not read" in text
            assert "000001.tar" in text
        else:
            assert _looks_like(image, _colour(int(key, 16)))
