"""infra/dataflow: the files that run openwit on Dataflow agree with openwit and with each other.

- terraform fmt passes (no provider is downloaded: `terraform validate` is not run);
- the shell scripts parse, and launch.sh passes every option a job needs (openwit replaced by
  a fake that records its command line);
- every Flex Template parameter is a real flag of the commands its help names, and
  flex_main.py turns parameters into a command line openwit's parser and Beam accept;
- the AWS credential helper prints what boto3's credential_process contract asks for, and
  none of its failure messages contains a credential (a fake session: no socket);
- constraints.txt pins exactly what `openwit[gcp,aws]` needs, at the versions installed here;
- the Dockerfile names the Beam, Python and torch versions the project pins;
- (slow, about 4-5 minutes) the image's dependency set resolves in a clean virtual
  environment and every openwit.pipeline and openwit.queries module imports there.

What is not here: a docker build (no engine), a real Dataflow job, Secret Manager or STS."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import importlib.util
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra" / "dataflow"
SCRIPTS = ("launch.sh", "build_container.sh")
PIPELINE_COMMANDS = ("candidates", "curate", "download", "build", "queries")


def load(name: str):
    """A module of infra/dataflow by file name (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"infra_dataflow_{name}", INFRA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_parser(command: str) -> argparse.ArgumentParser:
    from openwit.pipeline.apps.cli import make_parser

    parser = make_parser(command)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def command_flags(command: str) -> dict[str, argparse.Action]:
    return {flag: action for action in command_parser(command)._actions
            for flag in action.option_strings}


def checked_beam_options(beam_args: list[str]) -> dict:
    """Beam's options as openwit checks them (a misspelt flag raises), without handing them to
    FileSystems as a command would (that is process-wide)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from openwit.pipeline.core.beam import reject_unknown_options

    options = PipelineOptions(list(beam_args))
    reject_unknown_options(options, beam_args)
    return options.get_all_options()


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (INFRA / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    return pins


def project_pins() -> dict[str, str]:
    """Beam's pin in pyproject.toml's dependencies, torch's in the Makefile."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    beam = re.search(r'"apache-beam==([^"]+)"', dependencies)
    torch = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    return {"apache-beam": beam.group(1), "torch": torch.group(1)}


# constraints.txt describes the image's Python: other interpreters resolve other sets (numpy's
# newest releases need 3.11, 3.10 needs backports).
IMAGE_PYTHON = (3, 11)
needs_image_python = pytest.mark.skipif(
    sys.version_info[:2] != IMAGE_PYTHON,
    reason="constraints.txt pins the image's Python 3.11 environment")


# ---------------------------------------------------------------------- terraform, shell


def test_terraform_is_formatted():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("no terraform binary")
    result = subprocess.run([terraform, "fmt", "-check", "-diff", "-recursive",
                             str(INFRA / "terraform")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_grants_no_project_wide_storage_or_secret_role():
    main = (INFRA / "terraform" / "main.tf").read_text()
    project_roles = re.findall(r'resource "google_project_iam_member"[^{]*\{[^}]*role\s*=\s*"([^"]+)"',
                               main)
    assert sorted(project_roles) == ["roles/dataflow.developer", "roles/dataflow.worker"]
    assert "google_secret_manager_secret_version" not in main  # no secret value in code
    assert 'resource "google_secret_manager_secret_iam_member"' in main


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_are_executable(script):
    path = INFRA / script
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & stat.S_IXUSR


LAUNCH_ENV = {
    "PROJECT": "my-proj-123", "REGION": "europe-west4", "STAGING_BUCKET": "my-staging",
    "SERVICE_ACCOUNT": "openwit-worker@my-proj-123.iam.gserviceaccount.com",
    "IMAGE": "europe-west4-docker.pkg.dev/my-proj-123/openwit/openwit:0123456789ab",
}


def run_launch(tmp_path, args, **env):
    record = tmp_path / "argv.json"
    fake = tmp_path / "openwit"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    environ = {"PATH": os.environ["PATH"], "OPENWIT": str(fake), **env}
    result = subprocess.run(["bash", str(INFRA / "launch.sh"), *args], env=environ,
                            capture_output=True, text=True, timeout=60)
    argv = json.loads(record.read_text()) if record.exists() else None
    return result, argv


def option(argv, name):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_launch_passes_every_required_option(tmp_path):
    args = ["build", "--candidates", "gs://my-corpus/lists/*.parquet",
            "--queries", "gs://my-corpus/q.parquet", "--output", "gs://my-corpus/out"]
    result, argv = run_launch(tmp_path, args, DRY_RUN="1", NUM_WORKERS="3",
                              MAX_NUM_WORKERS="30", MACHINE_TYPE="n2-highcpu-8",
                              DATAFLOW_SERVICE_OPTIONS="enable_prime", **LAUNCH_ENV)
    assert result.returncode == 0, result.stderr
    assert argv[:len(args)] == args
    expected = {
        "--runner": ["DataflowRunner"], "--project": ["my-proj-123"],
        "--region": ["europe-west4"], "--temp_location": ["gs://my-staging/tmp"],
        "--staging_location": ["gs://my-staging/staging"],
        "--service_account_email": [LAUNCH_ENV["SERVICE_ACCOUNT"]],
        "--sdk_container_image": [LAUNCH_ENV["IMAGE"]], "--sdk_location": ["container"],
        "--machine_type": ["n2-highcpu-8"], "--num_workers": ["3"],
        "--max_num_workers": ["30"], "--experiments": ["use_runner_v2"],
        "--dataflow_service_options": ["enable_prime"], "--dry_run": ["True"],
    }
    for name, values in expected.items():
        assert option(argv, name) == values, name
    assert re.fullmatch(r"openwit-build-\d{8}-\d{6}", option(argv, "--job_name")[0])
    # And openwit's own parser and Beam take that command line as it is.
    _, beam_args = command_parser("build").parse_known_args(argv[1:])
    options = checked_beam_options(beam_args)
    assert options["sdk_container_image"] == LAUNCH_ENV["IMAGE"]
    assert options["experiments"] == ["use_runner_v2"]


def test_launch_defaults_to_build_and_no_dry_run(tmp_path):
    result, argv = run_launch(tmp_path, ["--output", "gs://my-corpus/out"], **LAUNCH_ENV)
    assert result.returncode == 0, result.stderr
    assert argv[0] == "build" and "--dry_run" not in argv
    assert option(argv, "--num_workers") == ["2"]


def test_launch_names_every_missing_variable(tmp_path):
    result, argv = run_launch(tmp_path, ["build"], REGION="us-central1")
    assert result.returncode == 2 and argv is None
    for name in ("PROJECT", "SERVICE_ACCOUNT", "IMAGE", "STAGING_BUCKET"):
        assert f"missing environment: {name}" in result.stderr
    assert "missing environment: REGION" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["train"], "not a pipeline command"),
    (["build", "--s3_secret_access_key=hunter2"], "Secret Manager"),
    (["build", "--s3-access-key-id", "AKIA"], "Secret Manager"),
])
def test_launch_refuses(tmp_path, args, message):
    result, argv = run_launch(tmp_path, args, **LAUNCH_ENV)
    assert result.returncode == 2 and argv is None
    assert message in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize("variable, value", [
    ("STAGING_BUCKET", "My_Bucket"), ("SERVICE_ACCOUNT", "someone@example.com"),
    ("NUM_WORKERS", "0"), ("JOB_NAME", "Build_1"),
])
def test_launch_rejects_bad_values(tmp_path, variable, value):
    result, argv = run_launch(tmp_path, ["build"], **{**LAUNCH_ENV, variable: value})
    assert result.returncode == 2 and argv is None, result.stderr


def test_build_container_tags_with_the_commit(tmp_path):
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"],
                                     capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    commit = subprocess.run([git, "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DRY_RUN": "1",
               "REPOSITORY": "us-central1-docker.pkg.dev/my-proj-123/openwit",
               "FLEX_TEMPLATE": "gs://my-staging/templates/openwit.json"}
    result = subprocess.run(["bash", str(INFRA / "build_container.sh")], env=environ,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    image = result.stdout.strip().splitlines()[-1].removeprefix("IMAGE=")
    assert image.startswith(f"us-central1-docker.pkg.dev/my-proj-123/openwit/openwit:{commit}")
    build = next(line for line in result.stdout.splitlines() if "buildx build" in line)
    for part in ("--platform linux/amd64", "--push", f"--tag {image}",
                 f"--file {INFRA / 'Dockerfile'}", f"OPENWIT_IMAGE={image}"):
        assert part in build
    assert "gcloud auth configure-docker us-central1-docker.pkg.dev" in result.stdout
    assert "gcloud dataflow flex-template build gs://my-staging/templates/openwit.json" \
        in result.stdout


# ---------------------------------------------------------------------- Flex Template


def metadata() -> dict:
    return json.loads((INFRA / "metadata.json").read_text())


def test_metadata_parameters_are_real_flags():
    from apache_beam.options.pipeline_options import PipelineOptions

    flex = load("flex_main")
    assert tuple(flex.COMMANDS) == PIPELINE_COMMANDS
    beam = set(PipelineOptions([]).get_all_options(display_warnings=False))
    flags = {command: command_flags(command) for command in PIPELINE_COMMANDS}
    meta = metadata()
    assert meta["name"] and meta["description"]
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names))
    for parameter in meta["parameters"]:
        name = parameter["name"]
        assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]*", name), name
        assert parameter["label"] and parameter["helpText"], name
        for regex in parameter.get("regexes", []):
            re.compile(regex)
        named = re.search(r"Commands: ([a-z, ]+)\.$", parameter["helpText"])
        assert named, f"{name}: helpText must end with 'Commands: ...'"
        said = tuple(c.strip() for c in named.group(1).split(","))
        if name in ("command", "verbose") or name in beam:
            assert said == PIPELINE_COMMANDS, name
            continue
        flag = flex.SPREAD.get(name) or flex.REPEATED.get(name) or f"--{name}"
        accepting = tuple(c for c in PIPELINE_COMMANDS if flag in flags[c])
        assert accepting, f"{name}: {flag} is a flag of no pipeline command"
        assert said == accepting, f"{name}: help names {said}, the parsers accept {accepting}"
        # Flags that take several values are split on ';' by flex_main, and only those.
        action = flags[accepting[0]][flag]
        several = isinstance(action, argparse._AppendAction) or action.nargs == "+"
        assert several == (name in flex.REPEATED or name in flex.SPREAD), name
    required = {p["name"] for p in meta["parameters"] if not p.get("isOptional", False)}
    assert required == {"command", "output"}
    command = next(p for p in meta["parameters"] if p["name"] == "command")
    for value in PIPELINE_COMMANDS:
        assert re.fullmatch(command["regexes"][0], value)
    for value in ("train", "demo", "build;curate"):
        assert not re.fullmatch(command["regexes"][0], value)


def test_every_repeated_pipeline_flag_can_be_a_parameter():
    flex = load("flex_main")
    for command in PIPELINE_COMMANDS:
        for flag, action in command_flags(command).items():
            several = isinstance(action, argparse._AppendAction) or action.nargs == "+"
            if several and flag.startswith("--"):
                key = flag[2:].replace("-", "_")
                assert key in flex.REPEATED or key in flex.SPREAD, f"{command} {flag}"


LAUNCHER_OPTIONS = [
    "--project=my-proj-123", "--region=us-central1", "--job_name=openwit-flex",
    "--staging_location=gs://my-staging/staging",
    "--temp_location=gs://my-staging/tmp",
    "--template_location=gs://my-staging/staging/template_launches/2026-01-01_00_00_00-1/job_object",
    "--service_account_email=openwit-worker@my-proj-123.iam.gserviceaccount.com",
]


def test_flex_parameters_become_an_openwit_command_line():
    flex = load("flex_main")
    argv = flex.openwit_argv([
        "--command=build", "--candidates=gs://a/x-*.parquet;gs://b/y.parquet",
        "--queries=gs://a/queries.parquet", "--output=gs://a/corpus",
        "--per_query_cap=500", "--languages=en,de", "--robots_txt=true", "--seed=",
        "--exclude_images=gs://e/h1.parquet;gs://e/h2.parquet", "--verbose=true",
        *LAUNCHER_OPTIONS], environ={"OPENWIT_SDK_CONTAINER_IMAGE": "r/p/openwit:abc"})
    assert argv[:2] == ["-v", "build"]
    assert argv[2:8] == ["--candidates", "gs://a/x-*.parquet", "--candidates",
                         "gs://b/y.parquet", "--exclude-images", "gs://e/h1.parquet"]
    assert "--runner=DataflowRunner" in argv
    assert "--sdk_container_image=r/p/openwit:abc" in argv
    assert not any(arg.startswith("--seed") for arg in argv)  # empty = not given
    # openwit's parser reads its flags from it, and leaves exactly the job's options to Beam.
    args, beam_args = command_parser("build").parse_known_args(argv[2:])
    assert args.candidates == ["gs://a/x-*.parquet", "gs://b/y.parquet"]
    assert args.exclude_images == ["gs://e/h1.parquet", "gs://e/h2.parquet"]
    assert (args.queries, args.output, args.per_query_cap) == (
        "gs://a/queries.parquet", "gs://a/corpus", 500)
    assert args.robots_txt is True and args.languages == "en,de"
    options = checked_beam_options(beam_args)
    assert options["runner"] == "DataflowRunner"
    assert options["template_location"].endswith("/job_object")
    assert options["sdk_container_image"] == "r/p/openwit:abc"


def test_flex_keeps_what_the_launch_names():
    flex = load("flex_main")
    argv = flex.openwit_argv(["--command", "curate", "--output", "gs://a/cur",
                              "--runner=DataflowRunner", "--sdk_container_image=x/y:z"],
                             environ={"OPENWIT_SDK_CONTAINER_IMAGE": "r/p/openwit:abc"})
    assert argv == ["curate", "--output=gs://a/cur", "--runner=DataflowRunner",
                    "--sdk_container_image=x/y:z"]


@pytest.mark.parametrize("argv, message", [
    (["--output=gs://a/o"], "no command parameter"),
    (["--command=train", "--output=gs://a/o"], "give one of"),
    (["--command=build", "--wat=gs://cc/*.wat.gz", "--output=gs://a/o"], "two pipelines"),
    (["--command=build", "--candidates=;", "--output=gs://a/o"], "at least one path"),
    (["--command=build", "--verbose=maybe"], "true or false"),
    (["build"], "--name=value"),
])
def test_flex_refuses(argv, message):
    flex = load("flex_main")
    with pytest.raises(flex.ParameterError, match=re.escape(message)):
        flex.openwit_argv(argv, environ={})
    err = io.StringIO()
    sys_stderr, sys.stderr = sys.stderr, err
    try:
        assert flex.main(argv) == 2
    finally:
        sys.stderr = sys_stderr
    assert err.getvalue().startswith("openwit flex template: error:")


def test_flex_logs_hide_secret_values():
    flex = load("flex_main")
    shown = flex.redacted(["build", "--s3_secret_access_key=hunter2", "--s3_session_token",
                           "tok3n", "--output", "gs://a/o"])
    assert "hunter2" not in shown and "tok3n" not in shown
    assert shown[-2:] == ["--output", "gs://a/o"]


# ------------------------------------------------------------------ the credential helper

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # a value that must never be printed
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"


class FakeResponse:
    def __init__(self, status: int, body):
        self.status_code = status
        self._body = body

    def json(self):
        if isinstance(self._body, Exception):
            raise self._body
        return self._body


class FakeSession:
    """Answers every GET with one response (or raises), and records the URLs."""

    def __init__(self, response=None, error=None):
        self.response, self.error, self.urls = response, error, []

    def get(self, url, timeout=None):
        self.urls.append(url)
        if self.error is not None:
            raise self.error
        return self.response


def secret_answer(payload: bytes) -> FakeResponse:
    return FakeResponse(200, {"name": "projects/1/secrets/s/versions/3",
                              "payload": {"data": base64.b64encode(payload).decode()}})


def run_helper(session=None, environ=None, **sources):
    helper = load("aws_credentials_from_secret")
    out, err = io.StringIO(), io.StringIO()
    if session is not None:
        sources["session_factory"] = lambda: (session, "my-proj-123")
    code = helper.main([], environ=environ or {}, stdout=out, stderr=err, **sources)
    return code, out.getvalue(), err.getvalue()


def test_helper_prints_credential_process_json_that_botocore_accepts():
    from botocore.credentials import ProcessProvider

    stored = {"AccessKeyId": "AKIAEXAMPLE", "SecretAccessKey": SECRET, "SessionToken": TOKEN}
    session = FakeSession(secret_answer(json.dumps(stored).encode()))
    code, out, err = run_helper(session)
    assert code == 0 and err == ""
    answer = json.loads(out)
    assert answer["Version"] == 1
    assert (answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"]) == (
        "AKIAEXAMPLE", SECRET, TOKEN)
    expires = dt.datetime.fromisoformat(answer["Expiration"].replace("Z", "+00:00"))
    ahead = expires - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=55) < ahead <= dt.timedelta(hours=1)
    assert session.urls == ["https://secretmanager.googleapis.com/v1/projects/my-proj-123/"
                            "secrets/openwit-aws-credentials/versions/latest:access"]

    class Popen:  # botocore runs the process; here it gets the helper's output instead
        returncode = 0

        def __init__(self, *args, **kwargs):
            pass

        def communicate(self):
            return out.encode(), b""

    provider = ProcessProvider("default", lambda: {"profiles": {"default": {
        "credential_process": "helper"}}}, popen=Popen)
    credentials = provider.load().get_frozen_credentials()
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        "AKIAEXAMPLE", SECRET, TOKEN)


def test_helper_reads_the_secret_and_version_it_is_told():
    stored = {"AccessKeyId": "AKIAEXAMPLE", "SecretAccessKey": SECRET,
              "Expiration": "2099-01-01T00:10:00Z"}
    session = FakeSession(secret_answer(json.dumps(stored).encode()))
    code, out, _ = run_helper(session, {
        "OPENWIT_AWS_SECRET": "projects/other-proj/secrets/aws/versions/7"})
    assert code == 0
    assert session.urls[0].endswith("/projects/other-proj/secrets/aws/versions/7:access")
    assert "SessionToken" not in json.loads(out)
    session = FakeSession(secret_answer(json.dumps(stored).encode()))
    run_helper(session, {"OPENWIT_AWS_SECRET": "aws", "OPENWIT_AWS_SECRET_PROJECT": "p-2"})
    assert session.urls[0].endswith("/projects/p-2/secrets/aws/versions/latest:access")


def test_helper_takes_an_earlier_stored_expiration():
    helper = load("aws_credentials_from_secret")
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    stored = json.dumps({"AccessKeyId": "A", "SecretAccessKey": SECRET,
                         "Expiration": "2030-01-01T00:20:00+00:00"}).encode()
    answer = helper.credentials_from_payload(stored, "v", now, 3600)
    assert answer["Expiration"] == "2030-01-01T00:20:00Z"


@pytest.mark.parametrize("case", ["denied", "not_found", "transport", "not_json", "not_object",
                                  "no_secret_key", "bad_expiration", "no_payload"])
def test_helper_failures_never_show_the_secret(case):
    leaky = f"{SECRET} {TOKEN}"
    sessions = {
        "denied": FakeSession(FakeResponse(403, {"error": {
            "code": 403, "status": "PERMISSION_DENIED", "message": leaky}})),
        "not_found": FakeSession(FakeResponse(404, ValueError(leaky))),
        "transport": FakeSession(error=ConnectionError(f"https://x/?access_token={TOKEN}")),
        "not_json": FakeSession(secret_answer(f"AccessKeyId=A\nSecret={SECRET}".encode())),
        "not_object": FakeSession(secret_answer(json.dumps([SECRET]).encode())),
        "no_secret_key": FakeSession(secret_answer(json.dumps(
            {"AccessKeyId": "AKIAEXAMPLE", "secret": SECRET}).encode())),
        "bad_expiration": FakeSession(secret_answer(json.dumps(
            {"AccessKeyId": "A", "SecretAccessKey": SECRET, "Expiration": SECRET}).encode())),
        "no_payload": FakeSession(FakeResponse(200, {"payload": {"data": SECRET + "!"}})),
    }
    code, out, err = run_helper(sessions[case])
    assert code == 1 and out == ""
    assert err.startswith("aws_credentials_from_secret: ")
    assert "openwit-aws-credentials" in err  # it says which secret
    assert SECRET not in err and TOKEN not in err and "AKIAEXAMPLE" not in err
    if case == "denied":
        assert "HTTP 403" in err and "PERMISSION_DENIED" in err and "secretAccessor" in err
    if case == "no_secret_key":
        assert "SecretAccessKey" in err


@pytest.mark.parametrize("secret", ["", "a/b", "projects/p/buckets/b"])
def test_helper_refuses_bad_names_before_asking_google(secret):
    def no_google():
        raise AssertionError("asked Google")

    code, out, err = run_helper(environ={"OPENWIT_AWS_SECRET": secret},
                                session_factory=no_google)
    assert code == 1 and out == "" and "OPENWIT_AWS_SECRET" in err


def test_helper_web_identity():
    seen = {}

    def fetch_token(audience):
        seen["audience"] = audience
        return TOKEN

    def assume_role(**arguments):
        seen.update(arguments)
        return {"Credentials": {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": SECRET,
                                "SessionToken": "session",
                                "Expiration": dt.datetime(2030, 1, 1, 1, tzinfo=dt.timezone.utc)}}

    environ = {"OPENWIT_AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/openwit"}
    code, out, err = run_helper(environ=environ, fetch_token=fetch_token,
                                assume_role=assume_role)
    assert code == 0, err
    assert json.loads(out) == {"Version": 1, "AccessKeyId": "ASIAEXAMPLE",
                               "SecretAccessKey": SECRET, "SessionToken": "session",
                               "Expiration": "2030-01-01T01:00:00Z"}
    assert seen == {"audience": "openwit-aws", "RoleArn": environ["OPENWIT_AWS_ROLE_ARN"],
                    "RoleSessionName": "openwit-dataflow", "WebIdentityToken": TOKEN}

    class Refused(Exception):
        response = {"Error": {"Code": "AccessDenied", "Message": f"token {TOKEN} refused"}}

    def refuse(**arguments):
        raise Refused(f"WebIdentityToken={TOKEN}")

    code, out, err = run_helper(environ=environ, fetch_token=fetch_token, assume_role=refuse)
    assert code == 1 and out == "" and "AccessDenied" in err and TOKEN not in err


def test_helper_runs_as_a_process_and_fails_in_one_line():
    result = subprocess.run([sys.executable, "-I", str(INFRA / "aws_credentials_from_secret.py")],
                            env={"PATH": os.environ["PATH"], "OPENWIT_AWS_SECRET": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "OPENWIT_AWS_SECRET is empty" in result.stderr


def test_aws_config_runs_the_installed_helper():
    config = (INFRA / "aws_config").read_text()
    process = re.search(r"^credential_process = (.+)$", config, re.M).group(1).split()
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"COPY infra/dataflow/aws_credentials_from_secret.py {process[-1]}" in dockerfile
    assert "AWS_CONFIG_FILE=/opt/openwit/aws/config" in dockerfile
    assert "COPY infra/dataflow/aws_config /opt/openwit/aws/config" in dockerfile


# --------------------------------------------------------------- constraints, Dockerfile


@needs_image_python
def test_constraints_pin_what_this_venv_runs():
    """The image installs with these pins: they must be the versions the suite passes with,
    and cover every distribution `openwit[gcp,aws]` needs (and nothing only tests need)."""
    from importlib import metadata

    from packaging.version import Version

    pins = constraint_pins()
    differing = {name: (version, metadata.version(name)) for name, version in pins.items()
                 if Version(metadata.version(name)).public != version}
    assert not differing, ("constraints.txt and this venv disagree (pin, installed); "
                           f"regenerate it (see its header): {differing}")
    needed = load("pin_constraints").requirement_closure()
    assert set(pins) == set(needed), (
        f"unpinned: {sorted(set(needed) - set(pins))}; not needed: "
        f"{sorted(set(pins) - set(needed))}; regenerate constraints.txt (see its header)")
    for test_only in ("pytest", "moto", "hypothesis", "import-linter", "gcp-storage-emulator"):
        assert test_only not in pins
    assert pins["apache-beam"] == project_pins()["apache-beam"]
    assert pins["torch"] == project_pins()["torch"]


def test_dockerfile_matches_the_project():
    dockerfile = (INFRA / "Dockerfile").read_text()
    pins = project_pins()
    assert re.search(rf"^FROM apache/beam_python3\.11_sdk:{re.escape(pins['apache-beam'])}$",
                     dockerfile, re.M)
    # The image's Python is one the project supports.
    supported = re.search(r'^requires-python = ">=3\.(\d+),<3\.(\d+)"$',
                          (ROOT / "pyproject.toml").read_text(), re.M)
    assert int(supported.group(1)) <= IMAGE_PYTHON[1] < int(supported.group(2))
    assert f"ARG TORCH_VERSION={pins['torch']}" in dockerfile
    assert "https://download.pytorch.org/whl/cpu" in dockerfile
    assert re.search(r'pip install --constraint /opt/openwit/constraints.txt "/opt/openwit/src\[gcp,aws\]"',
                     dockerfile)
    assert " -e " not in dockerfile and "--editable" not in dockerfile
    assert "NO_ALBUMENTATIONS_UPDATE=1" in dockerfile
    assert "/opt/google/dataflow/python_template_launcher" in dockerfile
    assert "python311-template-launcher-base" in dockerfile
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/openwit/flex_main.py" in dockerfile
    assert "COPY infra/dataflow/flex_main.py /opt/openwit/flex_main.py" in dockerfile
    assert dockerfile.rstrip().endswith('ENTRYPOINT ["/opt/apache/beam/boot"]')
    # Every file the image copies exists, and the ignore file lets it through.
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert f"!{path}" in ignore or f"!{path}/" in ignore, path


# ------------------------------------------------------------------ the clean environment


def source_modules(folder: str, package: str) -> list[str]:
    """Every module of a source folder, named as installed (pipeline/x/y.py ->
    openwit.pipeline.x.y)."""
    names = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT / folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((package, *parts)))
    return names


IMPORT_ALL = """
import importlib, json, sys
venv = sys.argv[1]
failed = {}
outside = []
for name in json.loads(sys.argv[2]):
    try:
        module = importlib.import_module(name)
    except Exception as error:
        failed[name] = repr(error)
        continue
    if not (getattr(module, "__file__", None) or "").startswith(venv):
        outside.append(name)
print(json.dumps({"failed": failed, "outside": outside}))
"""


@pytest.mark.slow
@needs_image_python
def test_image_dependency_set_resolves_and_imports_in_a_clean_venv(tmp_path):
    """What the Dockerfile does, in a fresh virtual environment (no system site packages):
    torch 2.13.0 first, then the files the image copies, installed (not editable) with the gcp
    and aws extras under constraints.txt; `pip check`, then every module of openwit.pipeline
    and openwit.queries imports from that environment. A package missing from pyproject's
    package list, or a dependency that does not resolve, fails here."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    environ = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PIP_NO_INPUT": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
    environ.pop("PYTHONPATH", None)
    environ.pop("VIRTUAL_ENV", None)

    def pip(*args, timeout=1200):
        result = subprocess.run([str(python), "-m", "pip", *args, "--quiet", "--no-compile",
                                 "--progress-bar", "off"], env=environ, cwd=tmp_path,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    # The image's build context, as its Dockerfile copies it.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("pipeline", "model", "queries"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    pip("install", f"torch=={project_pins()['torch']}")
    pip("install", "--constraint", str(INFRA / "constraints.txt"), f"{source}[gcp,aws]")
    check = subprocess.run([str(python), "-m", "pip", "check"], env=environ, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr

    modules = source_modules("pipeline", "openwit.pipeline") + \
        source_modules("queries", "openwit.queries")
    assert "openwit.pipeline.crawl" in modules
    result = subprocess.run([str(python), "-I", "-c", IMPORT_ALL, str(venv), json.dumps(modules)],
                            env=environ, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"failed": {}, "outside": []}

    # The same versions as constraints.txt (pip check says they agree with each other; this
    # says they are the tested ones).
    freeze = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"],
                            env=environ, capture_output=True, text=True, check=True).stdout
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    installed = {canonicalize_name(entry["name"]): Version(entry["version"]).public
                 for entry in json.loads(freeze)}
    differing = {name: (pin, installed.get(name)) for name, pin in constraint_pins().items()
                 if installed.get(name) != pin}
    assert not differing, differing

    # The console script works there too.
    help_text = subprocess.run([str(venv / "bin" / "openwit"), "build", "--help"], env=environ,
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert help_text.returncode == 0 and "--candidates" in help_text.stdout, help_text.stderr
