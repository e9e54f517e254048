"""model/data.py: the CLIP input pipeline over small WebDataset shards written here."""

from __future__ import annotations

import collections
import io
import json
import logging
import tarfile
import zlib

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from openwit.model import data
from openwit.model.data import LoaderConfig, augment_batch, list_shards, make_loader

CONTEXT = 77
IMAGE_SIZE = 32


def hash_tokenizer(texts: list[str]) -> torch.Tensor:
    """Stand-in for model/tokenizer.py: words hashed to ids, zero padded to CONTEXT."""
    tokens = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [zlib.crc32(word.encode()) % 49000 + 1 for word in text.split()][:CONTEXT]
        tokens[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens


def jpeg(seed: int, size=(48, 40), color=None) -> bytes:
    if color is None:
        rng = np.random.default_rng(seed)
        gradient = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
        array = (gradient * 0.5 + rng.integers(0, 128, (size[1], size[0], 3))).clip(0, 255)
        image = Image.fromarray(array.astype(np.uint8))
    else:
        image = Image.new("RGB", size, color)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def caption(shard: int, index: int) -> str:
    return f"shard{shard} sample{index} a photo"


def write_shard(path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)


def good_samples(shard: int, count: int) -> list[dict]:
    return [{"__key__": f"{shard:06d}{index:04d}", "jpg": jpeg(shard * 1000 + index),
             "txt": caption(shard, index), "json": json.dumps({"i": index}).encode()}
            for index in range(count)]


@pytest.fixture
def shard_folder(tmp_path):
    """4 shards x 10 good samples, with sizes.json."""
    folder = tmp_path / "shards"
    folder.mkdir()
    sizes = {}
    for shard in range(4):
        write_shard(folder / f"{shard:06d}.tar", good_samples(shard, 10))
        sizes[f"{shard:06d}.tar"] = 10
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return folder


def config(shards, **overrides) -> LoaderConfig:
    settings = dict(shards=str(shards), batch_size=8, workers=0, image_size=IMAGE_SIZE,
                    shuffle_buffer=16, seed=0, decode="cpu")
    settings.update(overrides)
    return LoaderConfig(**settings)


def rows(tokens: torch.Tensor) -> list[tuple]:
    return [tuple(row.tolist()) for row in tokens]


def all_batches(loader):
    return [(images.clone(), tokens.clone()) for images, tokens in loader]


# ------------------------------------------------------------------------------------------


def test_batches_have_shapes_dtypes_and_clip_normalisation(tmp_path):
    colour = (250, 10, 130)
    folder = tmp_path / "solid"
    folder.mkdir()
    write_shard(folder / "000000.tar", [
        {"__key__": f"k{index}", "jpg": jpeg(0, size=(60, 50), color=colour), "txt": "red"}
        for index in range(12)])
    loader = make_loader(config(folder, batch_size=4, drop_last=False), hash_tokenizer)
    batches = list(loader)
    assert [images.shape for images, _ in batches] == [(4, 3, IMAGE_SIZE, IMAGE_SIZE)] * 3
    for images, tokens in batches:
        assert images.dtype == torch.float32 and tokens.dtype == torch.int64
        assert tokens.shape == (4, CONTEXT)
        expected = [(c / 255 - m) / s for c, m, s in zip(colour, data.CLIP_MEAN, data.CLIP_STD)]
        per_channel = images.mean(dim=(0, 2, 3))
        assert torch.allclose(per_channel, torch.tensor(expected), atol=0.08)
    assert loader.skipped == {}


def test_unnormalised_values_stay_in_range(shard_folder):
    images, _ = next(iter(make_loader(config(shard_folder), hash_tokenizer)))
    mean = torch.tensor(data.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.CLIP_STD).view(1, 3, 1, 1)
    pixels = images * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.std() > 0.05  # real content, not a constant


def corrupt_shard(path) -> None:
    """6 good samples, one bad JPEG, one missing caption, one missing image, one non-UTF-8
    caption, one truncated JPEG, and a tar cut off inside its last member."""
    samples = good_samples(7, 6)
    samples.insert(2, {"__key__": "badjpeg", "jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg",
                       "txt": "broken"})
    samples.insert(4, {"__key__": "notext", "jpg": jpeg(1)})
    samples.insert(5, {"__key__": "noimage", "txt": "only words"})
    samples.insert(6, {"__key__": "badtext", "jpg": jpeg(2), "txt": b"\xff\xfe\xfa caption"})
    samples.insert(7, {"__key__": "cutjpeg", "jpg": jpeg(3)[:300], "txt": "cut"})
    samples.append({"__key__": "lastone", "jpg": jpeg(4), "txt": "the last caption here"})
    write_shard(path, samples)
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    assert last.name == "lastone.txt"
    with open(path, "r+b") as f:
        f.truncate(last.offset_data + 5)


def test_corrupt_and_incomplete_samples_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    corrupt_shard(folder / "000000.tar")
    loader = make_loader(config(folder, batch_size=4, drop_last=False), hash_tokenizer)
    seen = [row for _, tokens in loader for row in rows(tokens)]
    assert sorted(seen) == sorted(rows(hash_tokenizer([caption(7, i) for i in range(6)])))
    assert loader.skipped == {data.BAD_IMAGE: 2, data.MISSING_TEXT: 1, data.MISSING_IMAGE: 1,
                              data.BAD_TEXT: 1, data.TRUNCATED_TAR: 1}


def test_counts_reach_the_consumer_from_workers_even_without_a_final_batch(tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    corrupt_shard(folder / "000000.tar")
    loader = make_loader(config(folder, batch_size=4, workers=2), hash_tokenizer)
    assert sum(len(tokens) for _, tokens in loader) == 4  # drop_last: 6 good -> one batch
    assert sum(loader.skipped.values()) == 6


def test_error_handler_is_the_callers(tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    corrupt_shard(folder / "000000.tar")
    loader = make_loader(config(folder, batch_size=4, shuffle_buffer=0), hash_tokenizer,
                         handler=data.reraise)
    with pytest.raises(data.SampleError) as raised:
        list(loader)
    assert raised.value.reason == data.BAD_IMAGE and raised.value.key == "badjpeg"


def test_shard_specs_braces_folders_globs_and_sizes(shard_folder, tmp_path, caplog):
    braces = list_shards(f"{shard_folder}/{{000000..000002}}.tar")
    assert [u.rsplit("/", 1)[1] for u in braces.urls] == ["000000.tar", "000001.tar",
                                                           "000002.tar"]
    assert braces.sizes == (10, 10, 10) and braces.total_samples == 30
    folder = list_shards(str(shard_folder))
    assert len(folder.urls) == 4 and folder.total_samples == 40
    assert list_shards(f"{shard_folder}/*.tar").urls == folder.urls
    both = list_shards([f"{shard_folder}/000000.tar", f"{shard_folder}/000003.tar"])
    assert both.total_samples == 20

    bare = tmp_path / "bare"
    bare.mkdir()
    write_shard(bare / "000000.tar", good_samples(0, 3))
    with caplog.at_level(logging.WARNING, logger="openwit.model.data"):
        unknown = list_shards(str(bare))
    assert unknown.sizes == (None,) and unknown.total_samples is None
    assert "no sizes.json" in caplog.text
    # Without sizes.json, resampled mode needs an explicit epoch size.
    with pytest.raises(ValueError, match="epoch_samples"):
        make_loader(config(bare, resampled=True), hash_tokenizer)
    loader = make_loader(config(bare, resampled=True, epoch_samples=5, drop_last=False),
                         hash_tokenizer)
    assert sum(len(tokens) for _, tokens in loader) == 5


def worker_context(shards, slot, slots, rank=0, world_size=1, epoch=0, **overrides):
    cfg = config("unused", **overrides)
    plan = data._EpochPlan(shards, epoch, rank, world_size, 0, None, None, False)
    return data._WorkerContext(cfg, plan, slot, slots, data.ignore_and_continue,
                               collections.Counter())


def test_split_by_node_and_worker_is_disjoint_and_covering(shard_folder):
    shards = list_shards(str(shard_folder))
    for epoch in (0, 1):
        shares = [list(data.epoch_shard_urls(worker_context(shards, slot, 2, rank, 2, epoch)))
                  for rank in range(2) for slot in range(2)]
        assert all(len(share) == 1 for share in shares)
        assert sorted(url for share in shares for url in share) == sorted(shards.urls)
    orders = {tuple(data.epoch_shard_urls(worker_context(shards, 0, 1, epoch=e)))
              for e in range(6)}
    assert len(orders) > 1  # reshuffled per epoch


def test_an_epoch_over_workers_sees_every_sample_exactly_once(shard_folder):
    loader = make_loader(config(shard_folder, workers=2, drop_last=False), hash_tokenizer)
    seen = [row for _, tokens in loader for row in rows(tokens)]
    expected = rows(hash_tokenizer([caption(s, i) for s in range(4) for i in range(10)]))
    assert len(seen) == 40 and sorted(seen) == sorted(expected)


def test_resampled_epoch_has_exactly_epoch_samples(shard_folder):
    for workers in (0, 2):
        loader = make_loader(config(shard_folder, workers=workers, resampled=True,
                                    epoch_samples=30, drop_last=False), hash_tokenizer)
        sizes = [len(tokens) for _, tokens in loader]
        assert sizes == [8, 8, 8, 6] and len(loader) == 4
    loader = make_loader(config(shard_folder, resampled=True, epoch_samples=30), hash_tokenizer)
    assert [len(tokens) for _, tokens in loader] == [8, 8, 8] and len(loader) == 3
    # Two ranks split the epoch.
    per_rank = [sum(len(t) for _, t in make_loader(
        config(shard_folder, resampled=True, epoch_samples=32), hash_tokenizer,
        rank=rank, world_size=2)) for rank in range(2)]
    assert per_rank == [16, 16]


def test_same_seed_same_batches_other_seed_other_batches(shard_folder):
    def run(seed, epoch=0):
        return all_batches(make_loader(config(shard_folder, seed=seed, flip=True), hash_tokenizer,
                                       epoch=epoch))

    first, again, other, next_epoch = run(0), run(0), run(1), run(0, epoch=1)
    assert len(first) == 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, next_epoch))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_a_batch_gives_the_same_remaining_batches(shard_folder, workers):
    cfg = config(shard_folder, workers=workers, resampled=True, epoch_samples=48, flip=True)
    full = all_batches(make_loader(cfg, hash_tokenizer, epoch=3))
    assert len(full) == 6
    for start in (1, 3, 4):
        resumed = all_batches(make_loader(cfg, hash_tokenizer, epoch=3, start_batch=start))
        assert len(resumed) == len(full) - start
        for (images, tokens), (full_images, full_tokens) in zip(resumed, full[start:]):
            assert torch.equal(tokens, full_tokens) and torch.equal(images, full_images)


def test_resume_skips_corrupt_samples_the_same_way(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    corrupt_shard(folder / "000000.tar")
    write_shard(folder / "000001.tar", good_samples(1, 10))
    cfg = config(folder, batch_size=3, shuffle_buffer=4)
    full = all_batches(make_loader(cfg, hash_tokenizer))
    resumed = all_batches(make_loader(cfg, hash_tokenizer, start_batch=2))
    assert [rows(t) for _, t in resumed] == [rows(t) for _, t in full[2:]]


def test_gpu_augmentation_maths_on_cpu_tensors():
    left_dark = torch.zeros(3, 40, 60, dtype=torch.uint8)
    left_dark[:, :, 30:] = 255
    other = torch.full((3, 50, 50), 128, dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 60, 40], [0, 0, 60, 40], [5, 5, 45, 45]])
    flips = torch.tensor([False, True, False])
    out = augment_batch([left_dark, left_dark, other], boxes, flips, 24)
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
    std = torch.tensor(data.CLIP_STD).view(3, 1, 1)
    mean = torch.tensor(data.CLIP_MEAN).view(3, 1, 1)
    pixels = out * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels[0, :, :, :8].max() < 0.05 and pixels[0, :, :, -8:].min() > 0.95
    assert torch.allclose(out[1], out[0].flip(-1))  # flip mirrors left and right
    assert torch.allclose(pixels[2], torch.full_like(pixels[2], 128 / 255), atol=1e-4)
    # A batch tensor of same-size images works like a list.
    stacked = augment_batch(torch.stack([left_dark, left_dark]), boxes[:2], flips[:2], 24)
    assert torch.allclose(stacked, out[:2])


def test_gpu_worker_path_forwards_checked_jpegs_and_boxes(tmp_path):
    """The GPU path's worker half runs without CUDA: bytes, boxes and flips come out; a PNG is
    re-encoded as JPEG; corrupt and truncated JPEGs are counted like on the CPU path."""
    folder = tmp_path / "gpu"
    folder.mkdir()
    png = io.BytesIO()
    Image.new("RGBA", (40, 30), (0, 255, 0, 128)).save(png, "PNG")
    samples = good_samples(0, 4) + [{"__key__": "png", "png": png.getvalue(), "txt": "green"}]
    samples.insert(1, {"__key__": "cutjpeg", "jpg": jpeg(3)[:300], "txt": "cut"})
    samples.insert(2, {"__key__": "badjpeg", "jpg": b"\xff\xd8 nope", "txt": "bad"})
    write_shard(folder / "000000.tar", samples)
    cfg = config(folder, batch_size=5, shuffle_buffer=0, flip=True)
    plan = data._EpochPlan(list_shards(str(folder)), 0, 0, 1, 0, None, None, gpu_decode=True)
    (batch,) = list(data.ShardStream(cfg, plan, hash_tokenizer, data.ignore_and_continue))
    assert batch.size == 5 and batch.pixels is None and batch.skipped == {data.BAD_IMAGE: 2}
    blobs = torch.split(batch.encoded, batch.encoded_lengths)
    images = [torch.from_numpy(np.array(Image.open(io.BytesIO(b.numpy().tobytes()))
                                          .convert("RGB"))).permute(2, 0, 1) for b in blobs]
    assert all(Image.open(io.BytesIO(b.numpy().tobytes())).format == "JPEG" for b in blobs)
    assert batch.boxes.shape == (5, 4) and batch.flips.dtype == torch.bool
    for image, (left, top, right, bottom) in zip(images, batch.boxes.tolist()):
        assert 0 <= left < right <= image.shape[2] and 0 <= top < bottom <= image.shape[1]
    out = augment_batch(images, batch.boxes, batch.flips, IMAGE_SIZE)
    assert out.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_cpu_and_gpu_paths_draw_the_same_crops(shard_folder):
    cfg = config(shard_folder, shuffle_buffer=0, flip=True)
    shards = list_shards(str(shard_folder))
    gpu_plan = data._EpochPlan(shards, 0, 0, 1, 0, None, None, gpu_decode=True)
    raw = next(iter(data.ShardStream(cfg, gpu_plan, hash_tokenizer, data.ignore_and_continue)))
    blobs = torch.split(raw.encoded, raw.encoded_lengths)
    images = [torch.from_numpy(np.array(Image.open(io.BytesIO(b.numpy().tobytes()))))
              .permute(2, 0, 1) for b in blobs]
    on_tensors = augment_batch(images, raw.boxes, raw.flips, IMAGE_SIZE)
    via_pil, tokens = next(iter(make_loader(cfg, hash_tokenizer, shards=shards)))
    assert torch.equal(tokens, raw.tokens)
    # PIL's bicubic (a=-0.5) and torch's (a=-0.75) differ slightly; the crops must agree.
    assert (on_tensors - via_pil).abs().mean() < 0.1


def test_auto_picks_cpu_here_and_says_so(shard_folder, caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert data.choose_decode("auto")[0] is False
    loader = make_loader(config(shard_folder, decode="auto"), hash_tokenizer)
    assert loader.description.startswith("data: CPU decode in 0 workers")
    with caplog.at_level(logging.WARNING, logger="openwit.model.data"):
        assert data.choose_decode("gpu")[0] is False
    assert "GPU decode requested" in caplog.text


# ------------------------------------------------------------------------------------------
# s3:// through Beam's FileSystems (a local moto server)

@pytest.fixture
def s3_shards(shard_folder, s3):
    client, endpoint = s3
    for path in shard_folder.iterdir():
        client.upload_file(str(path), "corpus", f"out/shards/{path.name}")
    return ("--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
            "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1")


@pytest.fixture
def blank_filesystem_options():
    from apache_beam.io.filesystems import FileSystems

    saved = FileSystems._pipeline_options
    yield
    FileSystems.set_options(saved)


def test_reads_s3_shards_through_beam_in_workers(s3_shards, blank_filesystem_options):
    from apache_beam.io.filesystems import FileSystems

    cfg = config("s3://corpus/out/shards/{000000..000003}.tar", workers=2, drop_last=False,
                 filesystem_flags=s3_shards)
    loader = make_loader(cfg, hash_tokenizer)
    assert loader.plan.shards.total_samples == 40  # sizes.json read from s3 too
    # Workers start blank here, as spawned ones would: they must apply the flags themselves.
    FileSystems.set_options(None)
    seen = [row for _, tokens in loader for row in rows(tokens)]
    assert len(seen) == 40 and loader.skipped == {}


def assert_reads_survive_faults(upstream: str, config_of) -> None:
    """Shards read through tests/fault_proxy.py in front of `upstream` (resets, 503s, lost
    answers, trickled bodies on GETs) give exactly the samples of a direct read, and a missing
    shard is skipped and counted. `config_of(endpoint, shard_range)` is the loader's config
    for a store reached at `endpoint`."""
    from fault_proxy import FaultPlan, FaultProxy

    direct = config_of(upstream, "{000000..000003}")
    expected = [row for _, tokens in make_loader(direct, hash_tokenizer) for row in rows(tokens)]
    plan = FaultPlan(seed=4, slow_down=0.2, reset=0.2, reset_after_forward=0.2, trickle=0.3,
                     trickle_seconds=0.1, only=lambda method, path, query: method == "GET")
    with FaultProxy(upstream, plan) as proxy:
        loader = make_loader(config_of(proxy.url, "{000000..000004}"), hash_tokenizer)
        seen = [row for _, tokens in loader for row in rows(tokens)]
        faults = proxy.faults
    assert faults["reset"] + faults["slow_down"] + faults["reset_after_forward"] >= 2, faults
    assert seen == expected  # every fault retried: nothing lost, nothing repeated
    assert loader.skipped == {data.UNREADABLE_SHARD: 1}  # 000004 is not there: skipped


def test_s3_shards_read_through_a_faulty_store_retry_then_skip_and_count(
        s3_shards, blank_filesystem_options):
    def config_of(endpoint, shard_range):
        flags = (*s3_shards[:1], endpoint, *s3_shards[2:])
        return config(f"s3://corpus/out/shards/{shard_range}.tar", drop_last=False,
                      shuffle_buffer=1, shard_shuffle=False, filesystem_flags=flags)

    assert_reads_survive_faults(s3_shards[1], config_of)


def test_webdataset_can_read_s3_through_beam_when_registered(s3_shards,
                                                             blank_filesystem_options):
    import importlib

    schemes = importlib.import_module("webdataset.gopen").gopen_schemes
    saved = dict(schemes)
    try:
        data.register_webdataset_schemes(s3_shards)
        samples = list(wds.WebDataset("s3://corpus/out/shards/000001.tar", shardshuffle=False))
    finally:
        schemes.clear()
        schemes.update(saved)
    assert len(samples) == 10 and samples[0]["txt"] == caption(1, 0).encode()


# ------------------------------------------------------------------------------------------
# gs:// through Beam's GCS filesystem (a local GCS emulator)

@pytest.fixture
def gcs_shards(shard_folder, gcs, request):
    from openwit.pipeline.core import storage

    prefix = f"gs://corpus/{request.node.name}/shards"
    for path in shard_folder.iterdir():
        storage.write_bytes_atomic(f"{prefix}/{path.name}", path.read_bytes())
    return prefix


@pytest.mark.slow
def test_reads_gcs_shards_in_workers(gcs_shards):
    cfg = config(gcs_shards + "/{000000..000003}.tar", workers=2, drop_last=False)
    loader = make_loader(cfg, hash_tokenizer)
    assert loader.plan.shards.total_samples == 40  # sizes.json read from the bucket too
    seen = [row for _, tokens in loader for row in rows(tokens)]
    assert len(seen) == 40 and loader.skipped == {}


@pytest.mark.slow
def test_gcs_shards_read_through_a_faulty_store_retry_then_skip_and_count(
        gcs_shards, gcs, monkeypatch):
    def config_of(endpoint, shard_range):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)  # read when a read starts
        return config(f"{gcs_shards}/{shard_range}.tar", drop_last=False, shuffle_buffer=1,
                      shard_shuffle=False)

    assert_reads_survive_faults(gcs, config_of)


# ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_decode_matches_cpu_decode(shard_folder):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if not data.choose_decode("gpu")[0]:
        pytest.skip("torchvision unavailable")
    cfg = config(shard_folder, decode="gpu", workers=2, shuffle_buffer=0)
    loader = make_loader(cfg, hash_tokenizer, device="cuda")
    assert loader.description.startswith("data: GPU decode (nvjpeg)")
    gpu = all_batches(loader)
    cpu = all_batches(make_loader(dataclasses_replace(cfg, decode="cpu"), hash_tokenizer,
                                  device="cuda"))
    assert len(gpu) == len(cpu) == 5
    for (gpu_images, gpu_tokens), (cpu_images, cpu_tokens) in zip(gpu, cpu):
        assert gpu_images.is_cuda and gpu_images.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert torch.equal(gpu_tokens, cpu_tokens)
        assert (gpu_images - cpu_images).abs().mean() < 0.1


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def test_tar_reader_agrees_with_tarfile_on_pax_gnu_and_ustar(tmp_path):
    contents = {"short.txt": b"hello", "d" * 120 + "/long.jpg": b"x" * 1000,
                "p" * 90 + "/" + "q" * 60 + ".json": b"{}", "empty.txt": b"",
                "\u00e9t\u00e9.txt": "caf\u00e9".encode()}
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        path = tmp_path / f"{tar_format}.tar"
        with tarfile.open(path, "w", format=tar_format) as tar:
            directory = tarfile.TarInfo("somedir")
            directory.type = tarfile.DIRTYPE
            tar.addfile(directory)
            for name, payload in contents.items():
                if tar_format == tarfile.USTAR_FORMAT and len(name.split("/")[-1]) > 100:
                    continue
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(payload), 1.5  # float mtime: a pax header
                tar.addfile(info, io.BytesIO(payload))
        with tarfile.open(path) as tar:
            expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
        with open(path, "rb") as stream:
            assert list(data.tar_members(stream)) == expected
    corrupt = bytearray((tmp_path / f"{tarfile.PAX_FORMAT}.tar").read_bytes())
    corrupt[600] ^= 0xFF  # inside the second header
    with pytest.raises(data.TarFormatError):
        list(data.tar_members(io.BytesIO(bytes(corrupt))))


def test_gpu_batch_finishing_falls_back_and_drops_undecodable(tmp_path, monkeypatch):
    """The main-process half of the GPU path with a stand-in for nvjpeg (PIL on CPU): a batch
    the batched decode rejects is decoded one by one; an image nvjpeg and PIL both reject is
    dropped with its tokens, and counted."""
    folder = tmp_path / "gpu"
    folder.mkdir()
    undecodable = bytearray(jpeg(3))  # header parses, end marker present, Huffman table bogus
    table = undecodable.index(b"\xff\xc4")
    undecodable[table + 4:table + 12] = b"\xff" * 8
    samples = good_samples(0, 3)
    samples.insert(1, {"__key__": "garbled", "jpg": bytes(undecodable), "txt": "garbled"})
    write_shard(folder / "000000.tar", samples)

    def pil_decoder(blobs, device):
        images = []
        for blob in blobs:
            try:
                with Image.open(io.BytesIO(blob.numpy().tobytes())) as image:
                    array = np.array(image.convert("RGB"))
            except OSError as error:
                raise RuntimeError("nvjpeg stand-in failed") from error
            images.append(torch.from_numpy(array).permute(2, 0, 1).to(device))
        return images

    monkeypatch.setattr(data, "_nvjpeg_decoder", lambda: (pil_decoder, ""))
    cfg = config(folder, batch_size=4, shuffle_buffer=0)
    loader = make_loader(cfg, hash_tokenizer)
    plan = data._EpochPlan(loader.plan.shards, 0, 0, 1, 0, None, None, gpu_decode=True)
    (raw,) = list(data.ShardStream(cfg, plan, hash_tokenizer, data.ignore_and_continue))
    assert raw.size == 4 and raw.skipped == {}  # the worker's cheap check lets it through
    images, tokens = loader._finish(raw)
    assert images.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert rows(tokens) == rows(hash_tokenizer([caption(0, i) for i in range(3)]))
    assert loader.skipped == {data.GPU_DECODE_FAILED: 1}
