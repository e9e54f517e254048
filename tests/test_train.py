"""`openwit train`: the loss falls on a learnable toy corpus, a killed run resumes to the same
weights, the optimiser and schedule follow the paper's recipe, and the CLI writes a complete
checkpoint."""

import io
import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from openwit.model.options import TrainConfig  # noqa: E402
from openwit.model.train import (  # noqa: E402
    cosine_with_warmup,
    load_checkpoint,
    parameter_groups,
    train,
)

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (30, 60, 220),
           "yellow": (230, 220, 40)}
SHAPES = ("square", "circle")


def toy_image(colour, shape, index):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 96), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    offset = index % 20
    box = (10 + offset, 10 + offset // 2, 70 + offset, 70 + offset // 2)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_toy_shards(folder, samples=256, per_shard=64):
    """Captions name the colour and shape of the image: a contrastive model can learn them."""
    import webdataset as wds

    os.makedirs(folder, exist_ok=True)
    sizes = {}
    for shard in range(-(-samples // per_shard)):
        name = f"{shard:06d}.tar"
        with wds.TarWriter(os.path.join(folder, name)) as tar:
            count = 0
            for index in range(shard * per_shard, min(samples, (shard + 1) * per_shard)):
                colour = list(COLOURS)[index % len(COLOURS)]
                shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
                tar.write({"__key__": f"{index:08x}", "jpg": toy_image(colour, shape, index),
                           "txt": f"a photo of a {colour} {shape}".encode(),
                           "json": json.dumps({"key": f"{index:08x}"}).encode()})
                count += 1
        sizes[name] = count
    with open(os.path.join(folder, "sizes.json"), "w") as f:
        json.dump(sizes, f)
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_toy_shards(str(tmp_path_factory.mktemp("shards")))


def config(shards, output, **changes):
    settings = dict(shards=shards, output=str(output), model="tiny", batch_size=32, epochs=1,
                    workers=0, warmup_steps=3, vocab_size=300, lr=1e-3, log_every=2,
                    checkpoint_every=4, progress=False)
    settings.update(changes)
    return TrainConfig(**settings)


def test_loss_falls_on_a_learnable_corpus(shards, tmp_path):
    run = train(config(shards, tmp_path, epochs=4))
    losses = run["losses"]
    assert run["finished"] and len(losses) == 32
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.4, losses
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in lines] == list(range(2, 33, 2))
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_fraction"] <= 1 for r in lines)


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    """(summary, final checkpoint) of a 16-step run that nothing stopped: what a stopped and
    resumed run must end with."""
    output = tmp_path_factory.mktemp("uninterrupted")
    run = train(config(shards, output, epochs=2, workers=1))
    return run, load_checkpoint(str(output / "checkpoints" / "latest.pt"))


def test_a_killed_run_resumes_to_the_same_weights(shards, tmp_path, uninterrupted):
    uninterrupted, a = uninterrupted
    first = train(config(shards, tmp_path / "b", epochs=2, workers=1, stop_after_steps=5))
    assert not first["finished"] and first["steps"] == 5
    resumed = train(config(shards, tmp_path / "b", epochs=2, workers=1, resume=True))
    assert resumed["finished"] and resumed["steps"] == uninterrupted["steps"] == 16
    assert resumed["losses"] == uninterrupted["losses"][5:]
    b = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "latest.pt"))
    assert a["step"] == b["step"] == 16
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    metric_steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert metric_steps == sorted(set(metric_steps))  # no step logged twice


def test_checkpoint_is_a_plain_dict_that_carries_everything(shards, tmp_path):
    from openwit.model.config import ModelConfig
    from openwit.model.model import build_model
    from openwit.model.tokenizer import Tokenizer

    train(config(shards, tmp_path, stop_after_steps=2))
    checkpoint = load_checkpoint(str(tmp_path / "checkpoints" / "latest.pt"))
    assert {"model", "optimizer", "scheduler", "step", "random", "model_config",
            "train_config", "tokenizer"} <= set(checkpoint)
    model = build_model(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    tokenizer = Tokenizer.from_str(checkpoint["tokenizer"])
    features = model.encode_text(tokenizer.encode(["a photo of a red square"]))
    assert features.shape == (1, model.config.embed_dim)
    assert (tmp_path / "tokenizer.json").exists()
    assert not list((tmp_path / "checkpoints").glob("*.inprogress"))


def test_no_weight_decay_on_gains_biases_embeddings_and_temperature():
    from openwit.model.model import build_model

    model = build_model("tiny")
    decay, no_decay = parameter_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "logit_scale" in exempt
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any("embedding" in n or "positional" in n for n in decayed)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert len(exempt) + len(decayed) == len(list(model.parameters()))


def test_cosine_schedule_with_warmup():
    factor = cosine_with_warmup(10, 110)
    assert [round(factor(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0) and factor(200) == pytest.approx(0.0)


def test_bf16_autocast_trains_on_the_cpu(shards, tmp_path):
    run = train(config(shards, tmp_path, precision="bf16", stop_after_steps=3))
    assert run["precision"] == "bf16" and all(map(lambda x: x == x, run["losses"]))


def test_train_from_the_command_line(shards, tmp_path, capsys):
    from openwit.pipeline.apps.cli import main

    assert main(["train", "--shards", shards, "--output", str(tmp_path), "--batch-size", "32",
                 "--vocab-size", "300", "--warmup-steps", "2", "--workers", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "8 of 8 steps on cpu (fp32)" in out and "CPU decode" in out
    assert (tmp_path / "checkpoints" / "latest.pt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_training_uses_bf16_and_gpu_decode(shards, tmp_path):
    run = train(config(shards, tmp_path, stop_after_steps=4, decode="auto", workers=2))
    assert run["device"].startswith("cuda") and run["precision"] == "bf16"
    assert "GPU decode" in run["data"] or "torchvision" in run["data"]


@pytest.mark.slow
def test_two_process_data_parallel_training_with_torchrun(shards, tmp_path):
    # gloo on the CPU stands in for NCCL: the same code path (process group, DDP, the loss's
    # feature gather, rank-sharded data, rank 0 writing) that multi-GPU runs take.
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free port for the rendezvous, on loopback only
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "openwit.pipeline.apps.cli", "train",
         "--shards", shards, "--output", str(tmp_path), "--batch-size", "16",
         "--vocab-size", "300", "--warmup-steps", "2", "--workers", "0", "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("8 of 8 steps") == 1  # only rank 0 reports
    checkpoint = load_checkpoint(str(tmp_path / "checkpoints" / "latest.pt"))
    assert checkpoint["step"] == 8


@pytest.mark.slow
def test_compiled_model_trains(shards, tmp_path):
    run = train(config(shards, tmp_path, compile=True, stop_after_steps=2))
    assert run["steps"] == 2 and all(loss == loss for loss in run["losses"])
    checkpoint = load_checkpoint(str(tmp_path / "checkpoints" / "latest.pt"))
    assert not any(name.startswith("_orig_mod") for name in checkpoint["model"])


def test_a_run_in_a_bucket_resumes_to_the_same_weights(shards, s3, uninterrupted):
    """--output s3://...: checkpoints, metrics.jsonl and the tokenizer in the bucket; a
    stopped run resumes from the checkpoint there, as from a folder."""
    client, endpoint = s3
    flags = ("--s3_endpoint_url", endpoint, "--s3_access_key_id", "test",
             "--s3_secret_access_key", "test", "--s3_region_name", "us-east-1")
    output = "s3://corpus/train-resume"
    uninterrupted, a = uninterrupted
    first = train(config(shards, output, epochs=2, workers=1, stop_after_steps=5,
                         filesystem_flags=flags))
    assert not first["finished"] and first["checkpoint"] == f"{output}/checkpoints/latest.pt"
    resumed = train(config(shards, output, epochs=2, workers=1, resume=True,
                           filesystem_flags=flags))
    assert resumed["finished"] and resumed["losses"] == uninterrupted["losses"][5:]
    b = load_checkpoint(f"{output}/checkpoints/latest.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    stored = {entry["Key"] for entry in client.list_objects_v2(
        Bucket="corpus", Prefix="train-resume/")["Contents"]}
    assert stored == {f"train-resume/{name}" for name in (
        "checkpoints/latest.pt", "metrics.jsonl", "tokenizer.json", "run.json")}
    metrics = client.get_object(Bucket="corpus", Key="train-resume/metrics.jsonl")["Body"]
    steps = [json.loads(line)["step"] for line in metrics.read().decode().splitlines()]
    # Each logged step once across the stop, which logs its own last step.
    assert steps == sorted({*range(2, 17, 2), 5})
