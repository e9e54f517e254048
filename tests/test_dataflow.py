"""Each pipeline's graph as the DataflowRunner translates it, without submitting (Beam's dry
run: `--dry_run True`), and what a launch on a remote runner refuses before it builds one.

A dry run must not touch storage or the network: every test here runs with sockets and name
lookups refused, so a listing, a write probe or a credentials lookup fails the test. The graph
is checked for the stages each command must have and for paths of this machine: a pickled DoFn
that holds one would read or write the worker's own disk on Dataflow.
"""

from __future__ import annotations

import base64
import bz2
import os
import socket
import zlib

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

import openwit.pipeline.apps.cli as cli
from openwit.pipeline.apps.cli import main

DATAFLOW = ["--runner", "DataflowRunner", "--project", "openwit-dry-run", "--region",
            "us-central1", "--temp_location", "gs://openwit-dry/tmp", "--dry_run", "True"]
BUCKET = "gs://openwit-dry"


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and name lookup is refused and recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("a dry run opens no connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def dry_run(monkeypatch, no_network, capsys):
    """Runs an openwit command as a Dataflow dry run; returns its translated graph."""

    def run(*argv):
        results = []
        told = cli.told_dry_run
        monkeypatch.setattr(cli, "told_dry_run",
                            lambda result: results.append(result) or told(result))
        assert main([*argv, *DATAFLOW]) == 0
        assert no_network == [], "a dry run opened a connection"
        (result,) = results
        assert "nothing was submitted" in capsys.readouterr().out
        return result

    return run


def pickled_payloads(graph: beam_runner_api_pb2.Pipeline):
    """The bytes of every DoFn, CombineFn and source the graph carries, unpickled no further
    than Beam's own compression (base64 of bz2 or zlib)."""
    for transform in graph.components.transforms.values():
        spec = transform.spec
        if spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(spec.payload).do_fn.payload
        elif spec.urn == common_urns.composites.COMBINE_PER_KEY.urn:
            payload = beam_runner_api_pb2.CombinePayload.FromString(
                spec.payload).combine_fn.payload
        else:
            payload = spec.payload
        yield transform.unique_name, _decompressed(payload)


def _decompressed(payload: bytes) -> bytes:
    try:
        packed = base64.b64decode(payload, validate=True)
    except ValueError:
        return payload
    for decompress in (bz2.decompress, zlib.decompress):
        try:
            return decompress(packed)
        except (OSError, ValueError, zlib.error):
            continue
    return payload


def local_paths_in(graph, *paths: str) -> list[str]:
    """Steps whose payload names one of `paths` (this machine's folders)."""
    wanted = [p.encode() for p in paths if p]
    return [name for name, payload in pickled_payloads(graph)
            if any(path in payload for path in wanted)]


def assert_graph(result, expected_steps: list[str], tmp_path):
    assert result.runner == "DataflowRunner"
    names = result.step_names()
    missing = [step for step in expected_steps if step not in names]
    assert not missing, missing
    home = os.path.expanduser("~")
    assert local_paths_in(result.graph, str(tmp_path), os.getcwd(), home) == []
    # Every payload decoded: a DoFn that failed to be found would hide a path from the check.
    assert any(b"openwit" in payload for _, payload in pickled_payloads(result.graph))


def test_build_translates_for_dataflow(dry_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = dry_run("build", "--candidates", f"{BUCKET}/candidates/*.parquet",
                     "--queries", f"{BUCKET}/queries.parquet", "--output", f"{BUCKET}/corpus")
    assert_graph(result, [
        "Build corpus/Curate/Read candidates/Match files",
        "Build corpus/Curate/Normalise and match",
        "Build corpus/Curate/Find duplicate URLs",
        "Build corpus/Image half/Download/Fetch and resize",
        "Build corpus/Image half/Find duplicate images",
        "Build corpus/Image half/Find near-duplicates",
        "Build corpus/Image half/Exact cap",
        "Build corpus/Image half/Write shards/Write shard",
        "Build corpus/Image half/Summary",
    ], tmp_path)
    assert "Image half" in result.stages() and "Curate" in result.stages()


def test_curate_translates_for_dataflow(dry_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = dry_run("curate", "--candidates", f"{BUCKET}/candidates.csv",
                     "--queries", f"{BUCKET}/queries.txt", "--output", f"{BUCKET}/curated")
    assert_graph(result, ["Curate/Read candidates/Match files", "Curate/Normalise and match",
                          "Curate/Dedup, balance, language"], tmp_path)
    assert result.stages() == ["Curate", "Write"]


def test_download_translates_for_dataflow_and_reads_the_curation_on_the_workers(
        dry_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = dry_run("download", "--curated", f"{BUCKET}/curated", "--output",
                     f"{BUCKET}/corpus")
    assert_graph(result, ["Read curated", "Curate stages", "Curated query counts",
                          "Image half/Download/Fetch and resize",
                          "Image half/Write shards/Write shard"], tmp_path)


def test_queries_translates_for_dataflow(dry_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = dry_run("queries", "--wikipedia-dump", f"{BUCKET}/enwiki-*.xml.bz2",
                     "--pageviews", f"{BUCKET}/pageviews-*.gz", "--wordnet", "none",
                     "--output", f"{BUCKET}/queries")
    names = result.step_names()
    assert any(name.startswith("Query table/") for name in names)
    assert any("pageviews" in name.lower() for name in names)
    assert_graph(result, [], tmp_path)


def test_candidates_and_a_build_from_crawl_files_translate_for_dataflow(dry_run, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = dry_run("candidates", "--wat", f"{BUCKET}/crawl/*.wat.gz", "--output",
                     f"{BUCKET}/candidates")
    assert_graph(result, ["Extract", "Write candidates", "Write stats"], tmp_path)
    result = dry_run("build", "--wat", f"{BUCKET}/crawl/*.wat.gz", "--queries",
                     f"{BUCKET}/queries.txt", "--output", f"{BUCKET}/corpus")
    assert "Image half" in result.stages()


def test_the_check_finds_a_local_path_in_a_graph(dry_run, tmp_path, monkeypatch):
    # The path check above is only worth something if it sees paths inside pickled DoFns: a
    # local run's graph (the same transforms, translated the same way) holds its output folder.
    monkeypatch.chdir(tmp_path)
    from openwit.pipeline.jobs.curate import curate_graph
    from openwit.pipeline.text.config import curate_config

    args, beam_args = cli.make_parser("curate").parse_known_args(
        ["curate", "--candidates", str(tmp_path / "c.csv"), "--output", str(tmp_path / "out")])
    pipeline = curate_graph(curate_config(args), cli.beam_options(beam_args))
    assert local_paths_in(pipeline.to_runner_api(), str(tmp_path))


@pytest.mark.parametrize("argv, message", [
    (["build", "--candidates", "c.csv", "--output", f"{BUCKET}/corpus"],
     "--candidates 'c.csv' is a path on this machine"),
    (["build", "--candidates", f"{BUCKET}/c.csv", "--queries", "/data/q.txt", "--output",
      f"{BUCKET}/corpus"], "--queries '/data/q.txt' is a path on this machine"),
    (["curate", "--candidates", f"{BUCKET}/c.csv", "--output", "out"],
     "--output 'out' is a path on this machine"),
    (["download", "--curated", "curated", "--output", f"{BUCKET}/corpus"],
     "--curated 'curated' is a path on this machine"),
    (["candidates", "--wat", "crawl/*.wat.gz", "--output", f"{BUCKET}/c"],
     "--wat 'crawl/*.wat.gz' is a path on this machine"),
    (["queries", "--extra-queries", "mine.txt", "--wordnet", "none", "--output",
      f"{BUCKET}/q"], "--extra-queries 'mine.txt' is a path on this machine"),
])
def test_a_remote_runner_refuses_paths_of_this_machine(argv, message, no_network, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *DATAFLOW])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert no_network == []


@pytest.mark.parametrize("drop, extra, message", [
    ("--project", [], "needs --project"),
    ("--region", [], "needs --region"),
    ("--temp_location", [], "needs --temp_location gs://"),
    ("--temp_location", ["--temp_location", "/tmp/beam"], "needs --temp_location gs://"),
    ("--runner", [], "--dry_run True translates the graph for --runner DataflowRunner"),
    ("--dry_run", ["--dry_run", "perhaps"], "--dry_run 'perhaps': give True or False"),
])
def test_a_dataflow_launch_missing_an_option_is_one_line(drop, extra, message, no_network,
                                                         capsys):
    flags = list(DATAFLOW)
    at = flags.index(drop)
    del flags[at:at + 2]
    argv = ["curate", "--candidates", f"{BUCKET}/c.csv", "--output", f"{BUCKET}/out",
            *flags, *extra]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert no_network == []


def test_dry_run_false_is_not_a_dry_run():
    # Beam keeps the flag's text, and any non-empty text is true to its DataflowRunner.
    from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

    from openwit.pipeline.core.beam import is_dry_run

    options = PipelineOptions(["--runner", "DataflowRunner", "--dry_run", "False"])
    assert is_dry_run(options) is False
    assert options.view_as(TestOptions).dry_run is False


def test_a_store_error_at_launch_is_one_line_naming_the_path():
    # What Beam's GCS client raises after two minutes of retries on an unreachable store.
    from apache_beam.io.filesystem import BeamIOError
    from google.api_core.exceptions import RetryError

    from openwit.pipeline.core import storage
    from openwit.pipeline.core.errors import ConfigError

    listing = BeamIOError("List operation failed",
                          {"gs://b/out/": RetryError("Timeout of 120.0s exceeded", None)})
    with pytest.raises(ConfigError) as raised:
        with storage.at_launch():
            raise BeamIOError("Match operation failed", {"gs://b/out/*": listing})
    assert str(raised.value) == "storage: gs://b/out/*: gs://b/out/: Timeout of 120.0s exceeded"


def test_a_bug_at_launch_is_not_dressed_as_a_store_error():
    from openwit.pipeline.core import storage

    with pytest.raises(TypeError):
        with storage.at_launch():
            raise TypeError("a programming error stays a traceback")


def test_a_template_launch_is_not_waited_for(monkeypatch):
    # A Flex Template launch passes --template_location: Beam writes the job there and
    # Dataflow starts it after this process ends, so the launcher must not do its after-job
    # work (it would read a stats.json the job has not written yet).
    from apache_beam.options.pipeline_options import PipelineOptions

    from openwit.pipeline.core.beam import DryRun, run_pipeline

    class WrittenNotRun:
        job = None

        def wait_until_finish(self):
            raise AssertionError("a template's job is not this process's to wait for")

    class Pipeline:
        options = PipelineOptions(["--runner", "DataflowRunner",
                                   "--template_location", "gs://b/launches/1/job_object"])

        def run(self):
            return WrittenNotRun()

    result = run_pipeline(Pipeline())
    assert isinstance(result, DryRun) and result.template_location.endswith("job_object")
    assert "Dataflow starts it from there" in result.summary()


def test_a_build_from_crawl_files_is_refused_as_a_template(no_network, capsys):
    flags = [f for f in DATAFLOW if f not in ("--dry_run", "True")]
    with pytest.raises(SystemExit):
        main(["build", "--wat", f"{BUCKET}/x.wat.gz", "--output", f"{BUCKET}/out", *flags,
              "--template_location", f"{BUCKET}/launches/1/job_object"])
    assert "a build from crawl files is two jobs" in capsys.readouterr().err
    assert no_network == []
